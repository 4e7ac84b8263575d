"""The GPU session script's dry run: the same steps on tiny shapes, one tarball + summary back.

benchmarks/gpu_session.sh is run on a CUDA machine rarely, and in one go; this keeps a typo from
costing that run (CI has no GPU, so this is the only run the script gets before then).
"""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# in the order the script runs them: measurements first, then the GPU-marked tests, the sweep last
STEPS = ("env", "build", "host_overhead", "split_inference", "ops_block_diag_mm", "block_diag_mm_no_tma",
         "ops_grouped_conv", "ops_group_weight_reg", "tests", "memcheck", "sweep")


def test_dry_run_brings_back_one_tarball_and_a_summary_that_unpack_puts_in_place(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_SESSION_DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script's pytest step sets its own, as on the GPU machine
    done = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    tarballs = list(out.glob("gpu-run-*.tar.gz"))
    assert len(tarballs) == 1 and sorted(p.name for p in out.iterdir()) == sorted([tarballs[0].name, "summary.txt"])
    summary = (out / "summary.txt").read_text()
    steps = summary.split("## Steps")[1].split("```")[1].split()
    assert steps[::3] == list(STEPS), summary  # every step ran, in this order, and exited 0
    assert steps[1::3] == ["0"] * len(STEPS), summary
    assert "tests:" in summary and "| block_diag_mm | tiny-ragged-M5 | fwd |" in summary
    assert "build check: _C built for archs" in summary or "build check: splitkern._C did not load" in summary
    for mode in ("fwd", "fwd+bwd", "fwd-autocast", "fwd+bwd-autocast"):  # the host cost of both layers
        assert f"| linear-64-M1-G4 | {mode} |" in summary and f"| conv3x3-64-1x4x4-G4 | {mode} |" in summary
    for op in ("block_diag_mm", "grouped_conv", "group_weight_reg"):  # every op line with its event time
        assert f"| {op} | tiny-" in summary.split("## Event time vs kernel time")[1], (op, summary)
    with tarfile.open(tarballs[0]) as tar:
        names = tar.getnames()
    for op in ("block_diag_mm", "grouped_conv", "group_weight_reg", "split_inference", "host_overhead",
               "profile-block_diag_mm", "profile-grouped_conv"):
        assert any(n.startswith(f"./results/{op}-") and n.endswith(".csv") for n in names), (op, names)

    dest = tmp_path / "results"
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import unpack_gpu_results as u; "
            f"print('\\n'.join(map(str, u.unpack(__import__('pathlib').Path({str(tarballs[0])!r}), "
            f"__import__('pathlib').Path({str(dest)!r})))))")
    unpacked = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert unpacked.returncode == 0, unpacked.stderr
    assert list(dest.glob("block_diag_mm-*.csv")) and list(dest.glob("block_diag_mm-*.png"))
    assert list(dest.glob("host_overhead-*.csv")) and list(dest.glob("host_overhead-*.md"))  # no plot: a table
    assert list(dest.glob("tune-*.csv"))  # the sweep's timings come back too (no plot)
    assert list((dest / tarballs[0].name.removesuffix(".tar.gz")).glob("kernel_configs-*.json"))
    assert (dest / tarballs[0].name.removesuffix(".tar.gz") / "summary.txt").read_text() == summary
