"""Put a GPU run's results in place: CSVs into benchmarks/results/, plots regenerated, logs kept.

    python benchmarks/unpack_gpu_results.py gpu-results/gpu-run-*.tar.gz

The tarball is what ``benchmarks/gpu_session.sh`` leaves in ``$OUT``. Its ``results/*.csv``
already carry the names ``benchmarks/results/`` uses (``<op>-gpu-<chip>-<date>.csv``); each is
copied there with its speedup plot redrawn (the host-cost, profile and sweep CSVs have none), and the
Markdown tables beside them (``*.md``) with them. The run's logs, test report and summary go to
``benchmarks/results/gpu-run-<date>/``; a measured config table (``results/*configs*.json``)
is reported, for a person to install after reading it.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from gpu_summary import read_rows  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROW_TYPES = {"m": int, "k": int, "n": int, "groups": int, "median_ms": float, "tflops": float}


def to_row(d: dict) -> common.Row:
    values = {k: ROW_TYPES.get(k, str)(v) for k, v in d.items() if k in common.Row.__dataclass_fields__}
    for name in ("pct_roofline", "speedup", "bound", "of_dense_rate"):
        values[name] = float(d[name]) if d.get(name) else None
    return common.Row(**values)


def unpack(tarball: Path, dest: Path = RESULTS) -> list[Path]:
    written = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
        work = Path(tmp)
        session = dest / tarball.name.removesuffix(".tar.gz")
        session.mkdir(parents=True, exist_ok=True)
        for name in ("summary.txt", "steps.txt", "tests.xml"):
            if (work / name).exists():
                written.append(Path(shutil.copy(work / name, session / name)))
        if (work / "logs").exists():
            shutil.copytree(work / "logs", session / "logs", dirs_exist_ok=True)
            written.append(session / "logs")
        for csv_path in sorted((work / "results").glob("*.csv")):
            target = Path(shutil.copy(csv_path, dest / csv_path.name))
            written.append(target)
            raw = read_rows(target)
            if not raw or "speedup" not in raw[0]:  # the sweep's timings: no speedup plot
                continue
            rows = [to_row(r) for r in raw]
            if any(r.speedup for r in rows):
                written.append(common.plot_speedups(rows, target, target.stem))
        for table in sorted((work / "results").glob("*strategies*.json")):  # the split layers' choices
            written.append(Path(shutil.copy(table, dest / table.name)))
        for table in sorted((work / "results").glob("*.md")):  # the Markdown tables beside their CSVs
            written.append(Path(shutil.copy(table, dest / table.name)))
        for config in sorted((work / "results").glob("*configs*.json")):
            written.append(Path(shutil.copy(config, session / config.name)))
            print(f"measured config table: {session / config.name} (install it with "
                  f"`python -m splitkern.tune --install {session / config.name}` after reading it)")
    return written


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: unpack_gpu_results.py GPU_SESSION_TARBALL")
    for path in unpack(Path(sys.argv[1])):
        print(path)


if __name__ == "__main__":
    main()
