"""The GPU session script's dry run: the same steps on tiny shapes, one tarball + summary back.

The first lent GPU session runs benchmarks/gpu_session.sh exactly once; this keeps a typo from
costing it (CI has no GPU, so this is the only run the script gets before then).
"""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "build", "tests", "bench_block_diag_mm", "bench_grouped_conv", "bench_split_inference",
         "bench_group_weight_reg", "sweep", "memcheck")


def test_dry_run_brings_back_one_tarball_and_a_summary_that_unpack_puts_in_place(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_SESSION_DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script's pytest step sets its own, as on the GPU machine
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    tarballs = list(out.glob("gpu-session-*.tar.gz"))
    assert len(tarballs) == 1 and sorted(p.name for p in out.iterdir()) == sorted([tarballs[0].name, "summary.txt"])
    summary = (out / "summary.txt").read_text()
    for name in STEPS:
        assert f"\n{name} 0 " in summary, (name, summary)  # every step ran and exited 0
    assert "tests:" in summary and "| block_diag_mm | tiny-ragged-M5 | fwd |" in summary
    with tarfile.open(tarballs[0]) as tar:
        names = tar.getnames()
    for op in ("block_diag_mm", "grouped_conv", "group_weight_reg", "split_inference"):
        assert any(n.startswith(f"./results/{op}-") and n.endswith(".csv") for n in names), (op, names)

    dest = tmp_path / "results"
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import unpack_gpu_results as u; "
            f"print('\\n'.join(map(str, u.unpack(__import__('pathlib').Path({str(tarballs[0])!r}), "
            f"__import__('pathlib').Path({str(dest)!r})))))")
    unpacked = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert unpacked.returncode == 0, unpacked.stderr
    assert list(dest.glob("block_diag_mm-*.csv")) and list(dest.glob("block_diag_mm-*.png"))
    assert list(dest.glob("tune-*.csv"))  # the sweep's timings come back too (no plot)
    assert list((dest / tarballs[0].name.removesuffix(".tar.gz")).glob("kernel_configs-*.json"))
    assert (dest / tarballs[0].name.removesuffix(".tar.gz") / "summary.txt").read_text() == summary
