"""Build docs/results.md, and the figures it lacks, from the measurements committed in the repository.

    python docs/make_results.py          # or: make results

Reads ``benchmarks/results/`` (the op benchmarks, split-model inference, the GPU profile, the GPU test report,
the static kernel report, the config sweep, ``make demo`` timings and, when present, the host-overhead
benchmark) and
``experiments/cifar100/*/metrics.json``. Each measurement becomes a section with its figure, its table, the
command that makes it, the machine, the versions, the date and the files it comes from. A CSV's figure is
the PNG beside it; one that has none is drawn there (split inference) or into ``docs/figures/``.

Versions: torch and the machine come from a CSV's first line (``# <machine>, torch <version>``); the splitkern
version is setup.py's in the last commit that changed the file (git), so numbers measured on older code say so.
Nothing here measures anything.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CIFAR = ROOT / "experiments" / "cifar100"
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures"
OUT = DOCS / "results.md"
DRAW = True  # False: name the figures without drawing them (tests read the page without writing files)
# what changed the speed of what the older files measured (shown beside numbers measured before that version)
SPEED_CHANGES = {(0, 2, 1): "0.2.1 added execution strategies for split layers without autograd, folded the split's "
                            "entry permutation into the trunk and the CUTLASS sm90 GEMMs"}
OP_COMMANDS = {"block_diag_mm": "python benchmarks/bench_block_diag_mm.py",
               "grouped_conv": "python benchmarks/bench_grouped_conv.py",
               "group_weight_reg": "python benchmarks/bench_group_weight_reg.py",
               "split_inference": "python benchmarks/bench_split_inference.py"}
OP_TITLES = {"block_diag_mm": "block_diag_mm (ragged block-diagonal matmul)",
             "grouped_conv": "grouped_conv (ragged grouped convolution)",
             "group_weight_reg": "group_weight_reg (the R_W regulariser)",
             "split_inference": "Split models vs the dense models they came from (inference)"}
GPU_COMMAND = ("`bash benchmarks/gpu_session.sh` on the GPU machine, then "
               "`python benchmarks/unpack_gpu_results.py gpu-run-*.tar.gz` (see the README's GPU section)")


# --- provenance ------------------------------------------------------------------------------------------------

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _version_in(setup_py: str) -> str:
    found = re.search(r'version="([^"]+)"', setup_py)
    return found.group(1) if found else "unknown"


CURRENT = _version_in((ROOT / "setup.py").read_text())


def provenance(path: Path) -> dict:
    """``version`` (splitkern's, from setup.py at the last commit that changed ``path``), ``commit``, ``date``."""
    rel = path.relative_to(ROOT).as_posix()
    # --follow and no renames in the filter: a file that was only moved keeps the commit that wrote it
    commit = _git("log", "-1", "--follow", "--diff-filter=AMC", "--format=%h %ad", "--date=short", "--", rel)
    if not commit:
        return {"version": CURRENT, "commit": "not committed", "date": ""}
    sha, date = commit.split()
    return {"version": _version_in(_git("show", f"{sha}:setup.py")), "commit": sha, "date": date}


def text_of(path: Path) -> str:
    """``path``'s committed text (HEAD) where the working copy has uncommitted changes, else the file's: the page
    cites committed numbers, also in a checkout where a benchmark is being rerun."""
    rel = path.relative_to(ROOT).as_posix()
    if _git("status", "--porcelain", "--", rel):
        committed_text = _git("show", f"HEAD:{rel}")
        if committed_text:
            return committed_text + "\n"
    return path.read_text()


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def stale_note(version: str) -> str:
    """A warning for numbers measured on a splitkern older than the one that changed their speed."""
    notes = [text for since, text in SPEED_CHANGES.items() if version != "unknown" and _as_tuple(version) < since]
    if not notes:
        return ""
    return (f"> **Measured on splitkern {version}** (now {CURRENT}): {'; '.join(notes)}. These numbers describe "
            "the older code until the measurement is repeated.\n")


def csv_header(path: Path) -> str:
    """The ``# machine, torch ...`` line a benchmark writes first, without the ``#``."""
    lines = text_of(path).splitlines()
    first = lines[0] if lines else ""
    return first.lstrip("# ").strip() if first.startswith("#") else ""


def file_date(path: Path) -> str:
    found = re.search(r"\d{4}-\d{2}-\d{2}", path.name)
    return found.group(0) if found else provenance(path)["date"]


def rel(path: Path) -> str:
    """``path`` as a link target from docs/results.md."""
    return Path(os.path.relpath(path, DOCS)).as_posix()


def committed(paths):
    """The paths git tracks (every path outside a git checkout): the page cites only committed files."""
    paths = list(paths)
    if not paths or not _git("rev-parse", "--git-dir"):
        return paths
    tracked = set(_git("ls-files", "--", *(p.relative_to(ROOT).as_posix() for p in paths)).splitlines())
    return [p for p in paths if p.relative_to(ROOT).as_posix() in tracked]


def source_block(paths: list[Path], command: str, machine: str = "", speed: bool = True) -> str:
    """Command, machine, versions, dates and source files of one measurement (``speed``: warn when measured on a
    splitkern older than a change of speed)."""
    infos = [provenance(p) for p in paths]
    versions = sorted({i["version"] for i in infos}, key=_as_tuple)
    commits = ", ".join(dict.fromkeys(i["commit"] for i in infos))
    dates = sorted({file_date(p) for p in paths} - {""})
    when = dates[0] if len(dates) < 2 else f"{dates[0]} to {dates[-1]}"
    files = ", ".join(f"[`{p.relative_to(ROOT).as_posix()}`]({rel(p)})" for p in paths)
    lines = [f"- command: {command}"]
    if machine:
        lines.append(f"- machine and torch: {machine}")
    lines += [f"- splitkern {' and '.join(versions)} (commit {commits}), measured {when}", f"- source: {files}"]
    note = stale_note(versions[0]) if speed else ""
    return (note + "\n" if note else "") + "\n".join(lines) + "\n"


def read_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(line for line in text_of(path).splitlines() if not line.startswith("#")))


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- benchmark CSVs (benchmarks/common.Row) ---------------------------------------------------------------------

def _ms(value: str) -> str:
    ms = float(value)
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def row_table(rows: list[dict], timing: str = "Median ms per call") -> str:
    """One row per (case, dtype, mode), one column per line: ``ms (speedup over the baseline)``."""
    lines = list(dict.fromkeys(r["line"] for r in rows))
    cells, extra = defaultdict(dict), {}
    for r in rows:
        key = (r["case"], r["dtype"], r["mode"])
        speedup = f" ({float(r['speedup']):.2f}x)" if r.get("speedup") and r["line"] != r["baseline"] else ""
        if speedup and r.get("of_dense_rate"):
            speedup = f" ({float(r['speedup']):.2f}x, {float(r['tflops']):.3g} TFLOP/s = " \
                      f"{100 * float(r['of_dense_rate']):.0f}% of the {r['baseline']} rate)"
        cells[key][r["line"]] = _ms(r["median_ms"]) + speedup
        if r.get("bound"):
            extra.setdefault(key, {})["FLOP bound"] = f"{float(r['bound']):.2f}x"
        if r.get("note"):
            extra.setdefault(key, {})["split layers' strategies"] = r["note"]
    extra_cols = list(dict.fromkeys(c for e in extra.values() for c in e))
    header = ["case", "dtype", "mode", *(f"{ln} ms" for ln in lines), *extra_cols]
    body = [[*key, *(cells[key].get(ln, "") for ln in lines), *(extra.get(key, {}).get(c, "") for c in extra_cols)]
            for key in cells]
    baseline = rows[0].get("baseline", "dense")
    rates = any(r.get("of_dense_rate") for r in rows)
    rate_text = (f", the useful TFLOP/s and their share of `{baseline}`'s own FLOP rate (speedup / FLOP bound)"
                 if rates else "")
    return (f"{timing}; in brackets the speedup over `{baseline}` (> 1: faster){rate_text}.\n\n"
            + md_table(header, body))


def figure_of(path: Path, rows: list[dict]) -> Path | None:
    """The PNG beside ``path``, drawn there when missing (speedups per case, as the benchmark draws them)."""
    png = path.with_suffix(".png")
    if png.exists() or not any(r.get("speedup") for r in rows):
        return png if png.exists() else None
    if not DRAW:
        return png
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from unpack_gpu_results import to_row

    typed = [to_row(r) for r in rows]
    if path.name.startswith("split_inference"):
        from bench_split_inference import plot

        return plot(typed, path, f"split vs dense inference, {csv_header(path)}")
    import common

    return common.plot_speedups(typed, path, f"{path.stem} ({csv_header(path)})")


def benchmark_section(op: str) -> str:
    files = sorted(committed(RESULTS.glob(f"{op}-*.csv")), key=lambda p: (file_date(p), p.name), reverse=True)
    files = [p for p in files if "strategies" not in p.name]
    if not files:
        return ""
    out = [f"## {OP_TITLES[op]}\n"]
    for path in files:
        rows = read_rows(path)
        if not rows:
            continue
        kind = "GPU" if "-gpu-" in path.name else "CPU"
        what = " (backend lines)" if "-backends-" in path.name else ""
        out.append(f"### {kind}{what}, {file_date(path)}\n")
        png = figure_of(path, rows)
        if png is not None:
            out.append(f"![{path.stem}]({rel(png)})\n")
        command = GPU_COMMAND if kind == "GPU" else f"`{OP_COMMANDS[op]}`" + (
            " (`--name " + path.name.split("-cpu")[0] + "` with the backend lines)" if what else "")
        sources = [path] + ([path.with_suffix(".md")] if path.with_suffix(".md").exists() else [])
        out.append(source_block(sources, command, csv_header(path)))
        interleaved = op == "split_inference" and _as_tuple(provenance(path)["version"]) >= (0, 2, 1)
        out.append(row_table(rows, "Fastest ms per call over interleaved rounds of every line" if interleaved else
                             "Median ms per call"))
    return "\n".join(out)


# --- the other result files --------------------------------------------------------------------------------------

def per_file_sections(pattern: str, title: str, command: str, body, intro: str = "", newest_first: bool = False,
                      machine: str = "") -> str:
    """A section with one subsection per committed ``benchmarks/results/<pattern>`` file: its figure (the PNG beside
    it, if any), its provenance, and ``body(path)``; empty when there is no such file."""
    files = sorted(committed(RESULTS.glob(pattern)), reverse=newest_first)
    if not files:
        return ""
    out = [f"## {title}\n"] + ([intro] if intro else [])
    for path in files:
        out.append(f"### {path.stem}\n")
        png = path.with_suffix(".png")
        if png.exists():
            out.append(f"![{path.stem}]({rel(png)})\n")
        out.append(source_block([path], command, (csv_header(path) if path.suffix == ".csv" else "") or machine))
        out.append(body(path))
    return "\n".join(out)


def profile_section() -> str:
    def body(path):
        return md_table(["case", "mode", "line", "event ms", "kernel ms", "launches"],
                        [[r["case"], r["mode"], r["line"], r["event_ms"], r["kernel_ms"], r["launches"]]
                         for r in read_rows(path)])

    return per_file_sections("profile-*.csv", "GPU profile: kernel time vs the timed call", GPU_COMMAND, body,
                             "`benchmarks/gpu_profile.py` times a call with CUDA events (`event_ms`) and reads the "
                             "kernels' own time from torch.profiler (`kernel_ms`); the difference is host work around "
                             "the kernels.\n")


def gpu_tests_section() -> str:
    reports = sorted(committed(RESULTS.glob("gpu-run-*/tests.xml")))
    if not reports:
        return ""
    out = ["## Tests on a GPU\n"]
    for path in reports:
        root = ET.fromstring(text_of(path))
        suite = next(root.iter("testsuite")).attrib
        total, failed, errors, skipped = (int(suite[k]) for k in ("tests", "failures", "errors", "skipped"))
        failing = [f"`{case.get('classname')}::{case.get('name')}`"
                   for case in root.iter("testcase")
                   if case.find("failure") is not None or case.find("error") is not None]
        summary = path.parent / "summary.txt"
        out.append(f"### {path.parent.name}\n")
        out.append(source_block([path, summary] if summary.exists() else [path], GPU_COMMAND,
                                _gpu_machine(summary)))
        out.append(md_table(["tests", "passed", "failed", "errors", "skipped"],
                            [[total, total - failed - errors - skipped, failed, errors, skipped]]))
        if failing:
            out.append("Failed or errored: " + ", ".join(failing) + ".\n")
    return "\n".join(out)


def _gpu_machine(summary: Path) -> str:
    if not summary.exists():
        return ""
    found = re.search(r"^torch (\S+) triton (\S+) (.+)$", text_of(summary), re.MULTILINE)
    return f"{found.group(3)}, torch {found.group(1)}, Triton {found.group(2)}" if found else ""


def kernels_section() -> str:
    files = sorted(committed(RESULTS.glob("kernels-sm*.csv")))
    if not files:
        return ""
    out = ["## Static kernel report (compiled for the GPU, read without one)\n",
           "Every kernel variant the dispatcher can launch, compiled for the arch and read with cuobjdump: registers, "
           "spills (stack/local bytes), tensor-core instructions. CI fails on a spill, a compile error or a missing "
           "tensor-core instruction.\n"]
    rows = []
    for path in files:
        data = read_rows(path)
        spills = sum(int(r["stack_bytes"] or 0) + int(r["local_bytes"] or 0) > 0 for r in data)
        errors = sum(bool(r["error"]) for r in data)
        tc = sum(r["tensor_cores"] == "True" for r in data)
        regs = max(int(r["registers"] or 0) for r in data)
        rows.append([path.stem.split("-")[1], len(data), len({r["kernel"] for r in data}), tc, regs, spills, errors])
    out.append(source_block(files, "`splitkern report-kernels` (`make kernels`)", "any machine with nvcc/Triton"))
    out.append(md_table(["arch", "variants", "kernels", "with tensor cores", "max registers", "spilling", "errors"],
                        rows))
    return "\n".join(out)


def sweep_section() -> str:
    def body(path):
        data = read_rows(path)
        best: dict = {}
        for r in data:
            key = (r["op"], r["pass"], r["dtype_class"], r["shape_class"])
            if r["status"] == "ok" and (key not in best or float(r["median_ms"]) < float(best[key]["median_ms"])):
                best[key] = r
        return (f"{len(data)} configs timed, {sum(r['status'] == 'ok' for r in data)} ran; the fastest per entry "
                "(not installed: the shipped table is checked by the static kernel report under the pinned Triton "
                "first):\n\n"
                + md_table(["op", "pass", "dtype class", "batch class", "tile (m, n, k)", "warps", "stages", "ms"],
                           [[*k, f"{r['block_m']}x{r['block_n']}x{r['block_k']}", r["num_warps"], r["num_stages"],
                             r["median_ms"]] for k, r in best.items()]))

    return per_file_sections("tune-*.csv", "Kernel config sweep (`python -m splitkern.tune`)", GPU_COMMAND, body,
                             machine="the GPU in the file name")


def csv_as_written(path: Path) -> str:
    """A result CSV as a Markdown table, its columns as written (those empty in every row left out)."""
    data = read_rows(path)
    columns = [c for c in data[0] if any(r[c] for r in data)] if data else []
    return md_table(columns, [[r[c] for c in columns] for r in data])


def host_overhead_section() -> str:
    """benchmarks/bench_host_overhead.py's CSVs, when there are any (the table as written)."""
    return per_file_sections("host_overhead-*.csv", "Host overhead of split layers (per call, small shapes)",
                             "`python benchmarks/bench_host_overhead.py`", csv_as_written, newest_first=True)


def triton_launch_section() -> str:
    """benchmarks/bench_triton_launch.py's CSVs: Triton's Python launch path, kernel[grid] vs the cached launch."""
    return per_file_sections("triton_launch-*.csv", "Triton launch path per launch (Python only, no GPU)",
                             "`python benchmarks/bench_triton_launch.py`", csv_as_written, newest_first=True)


def demo_section() -> str:
    """``make demo`` from a fresh clone, as recorded in benchmarks/results/demo-*.txt (the time, the machine's load,
    the summary the demo printed)."""
    return per_file_sections("demo-*.txt", "`make demo` from a fresh clone",
                             "`git clone ... && cd splitkern && time make demo`",
                             lambda path: "```\n" + text_of(path).strip() + "\n```\n", newest_first=True)


# --- CIFAR-100 -----------------------------------------------------------------------------------------------------

ARMS = ("splitnet", "dense", "random", "cluster", "thin")
CIFAR_MACHINE = "a 2-core CPU, no GPU (experiments/cifar100/README.md)"


def arms_of(metrics: dict) -> dict[str, dict]:
    main = {"test_acc": metrics["test_acc"], "params": metrics["params_split"], "nmi_coarse": metrics.get("nmi_coarse"),
            "test_acc_before_split": metrics.get("test_acc_before_split"),
            "test_acc_at_split": metrics.get("test_acc_at_split")}
    return {"splitnet": main, **metrics.get("baselines", {})}


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def cifar_table(runs: dict[str, dict]) -> str:
    rows = []
    for name, metrics in runs.items():
        for arm, result in arms_of(metrics).items():
            nmi = result.get("nmi_coarse")
            rows.append([name, arm, _pct(result["test_acc"]), f"{result['params']:,}",
                         f"{100 * result['params'] / metrics['params_dense']:.1f}%",
                         "" if nmi is None else f"{nmi:.3f}", _pct(result.get("test_acc_before_split")),
                         _pct(result.get("test_acc_at_split"))])
    return md_table(["run", "arm", "test acc %", "params", "of dense", "NMI vs superclasses", "acc before split %",
                     "acc right after split %"], rows)


def cifar_figure(runs: dict[str, dict]) -> Path:
    png = FIGURES / "cifar100_accuracy_vs_params.png"
    if not DRAW:
        return png
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = dict(zip(ARMS, "o*sD^"))
    for arm in ARMS:
        points = [(100 * r["params"] / m["params_dense"], 100 * r["test_acc"])
                  for m in runs.values() for a, r in arms_of(m).items() if a == arm]
        if points:
            ax.scatter(*zip(*points), marker=markers[arm], s=120 if arm == "splitnet" else 60, label=arm)
    ax.set_xlabel("parameters, % of the dense WRN-16-2")
    ax.set_ylabel("CIFAR-100 test accuracy, %")
    ax.set_title(f"CIFAR-100, WRN-16-2 2-2-2, 15 epochs, one schedule for every arm ({len(runs)} seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _changed(config: dict, reference: dict) -> str:
    """``key=value`` for every setting of ``config`` that differs from ``reference`` (run bookkeeping left out)."""
    skip = {"out", "resume", "overwrite", "seed", "baselines", "progress", "tensorboard", "data", "device", "workers",
            "sync_bn", "image_size"}
    diffs = [f"`{k}={v}`" for k, v in config.items() if k not in skip and reference.get(k) != v
             and (k in reference or v not in (None, False, 0))]  # a setting added since: shown when it is on
    return ", ".join(diffs) or "nothing but the seed"


def _load_runs(names) -> dict[str, dict]:
    paths = committed(CIFAR / name / "metrics.json" for name in names)
    return {path.parent.name: json.loads(text_of(path)) for path in paths}


def cifar_section() -> str:
    fair = _load_runs(sorted(p.parent.name for p in CIFAR.glob("fair_s*/metrics.json")))
    if not fair:
        return ""
    first = next(iter(fair.values()))
    cfg = first["config"]
    out = ["## CIFAR-100: SplitNet against its baselines\n",
           f"WRN-16-{first['model'].split('-')[-1]} `{first['spec']}`, {cfg['stage1_epochs'] + cfg['stage2_epochs']} "
           f"epochs ({cfg['warmup_epochs']} dense warm-up, {cfg['stage1_epochs'] - cfg['warmup_epochs']} learning the "
           f"groups, {cfg['stage2_epochs']} after the split), one cosine schedule from lr {cfg['lr']} for every arm, "
           f"`--precision {cfg['precision']}` on `--device {cfg['device']}`, gammas {tuple(cfg['gammas'])}, "
           f"assign lr {cfg['assign_lr']}. Arms: `splitnet`; `dense` (never split); `random` and `cluster` (the dense "
           "arm split along random balanced or k-means groups, then the same fine-tuning); `thin` (a dense WRN with "
           "SplitNet's parameter count). Data: CIFAR-100, 50,000 training and 10,000 test images "
           "(`experiments/cifar100/README.md`).\n",
           f"![accuracy vs parameters]({rel(cifar_figure(fair))})\n"]
    paths = [CIFAR / n / "metrics.json" for n in fair]
    out.append(source_block(paths, "`DATA=<cifar-100 folder> experiments/cifar100/fair_protocol.sh arms SEED`",
                            CIFAR_MACHINE, speed=False))
    out.append(cifar_table(fair))
    for name in ("learning_curves", "assignments"):
        png = CIFAR / next(iter(fair)) / f"{name}.png"
        if png.exists():
            out.append(f"![{name}]({rel(png)})\n")
    route = _load_runs(["fair_route_s0"])
    if route:
        out.append("### Splitting an already-trained model (`--init-from`)\n")
        out.append("The seed-0 dense arm, split and fine-tuned for 2 + 2 epochs at lr 0.02, against the same dense "
                   "model continued for 4 epochs.\n")
        out.append(source_block([CIFAR / "fair_route_s0" / "metrics.json"],
                                "`DATA=<cifar-100 folder> experiments/cifar100/fair_protocol.sh route`", CIFAR_MACHINE,
                                speed=False))
        out.append(cifar_table(route))
    shown = set(fair) | set(route)
    variants = _load_runs(sorted(p.parent.name for p in CIFAR.glob("*/metrics.json")
                                 if p.parent.name not in shown and not p.parent.name.startswith("wrn16-2_")))
    if variants:
        out.append("### Variants of the protocol\n")
        out.append("The same protocol with one setting changed (each run's `config` in its metrics.json; "
                   "`experiments/cifar100/README.md` tells why):\n")
        out.append(md_table(["run", "seed", "changed from the runs above"],
                            [[name, m["config"].get("seed"), _changed(m["config"], cfg)]
                             for name, m in variants.items()]))
        out.append(source_block([CIFAR / n / "metrics.json" for n in variants], "`DATA=<cifar-100 folder> "
                                "experiments/cifar100/fair_protocol.sh` (see the script's modes)", CIFAR_MACHINE,
                                speed=False))
        out.append(cifar_table(variants))
    older = _load_runs(sorted(p.parent.name for p in CIFAR.glob("wrn16-2_*/metrics.json")))
    if older:
        out.append("### Earlier runs (an older protocol; kept for the record)\n")
        out.append("These ran before the protocol above existed (their arms did not share one schedule); "
                   "`experiments/cifar100/README.md` tells what each varied and why the protocol changed.\n")
        out.append(source_block([CIFAR / n / "metrics.json" for n in older], "`splitkern train` (see each run's "
                                "`config` in its metrics.json)", speed=False))
        out.append(cifar_table(older))
    return "\n".join(out)


# --- the page ----------------------------------------------------------------------------------------------------

SECTIONS = (cifar_section, demo_section, lambda: benchmark_section("split_inference"), host_overhead_section,
            triton_launch_section,
            lambda: benchmark_section("block_diag_mm"), lambda: benchmark_section("grouped_conv"),
            lambda: benchmark_section("group_weight_reg"), profile_section, gpu_tests_section, kernels_section,
            sweep_section)


def build() -> str:
    sections = [s for s in (section() for section in SECTIONS) if s]
    titles = [s.splitlines()[0].removeprefix("## ") for s in sections]
    toc = "\n".join(f"- [{t}](#{_anchor(t)})" for t in titles)
    head = ("# Results\n\n"
            "Generated by `make results` (`docs/make_results.py`) from the files each section names; edit those, "
            "not this page. Each section gives the command that produced its numbers, the machine, the versions and "
            "the date. Benchmarks never assert a speed; a number measured on an older splitkern says so.\n\n"
            f"{toc}\n")
    return head + "\n" + "\n".join(sections)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def main() -> None:
    OUT.write_text(build())
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
