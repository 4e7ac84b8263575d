"""Markdown tables of fair-protocol runs: one row per arm, plus the mean over seeds per variant.

    python experiments/cifar100/fair_table.py experiments/cifar100/fair_s0 experiments/cifar100/fair_s1 \\
        experiments/cifar100/fair_anneal3_s0 experiments/cifar100/fair_anneal3_s1

Each argument is a run folder with the ``metrics.json`` of ``splitkern train`` (a copy of the
small files is enough). A folder ``NAME_sK`` is seed K of variant NAME; the mean table groups arms by
variant. ``dense`` and ``thin`` do not depend on the split method, so the mean table compares every
variant with the dense / thin arms of all folders pooled, and with the ``random`` arm of its own
variant (which shares its anneal). Accuracies in percent; params as a share of the dense model too;
"off-block" is the mean over split layers of ``||(1 - B) W||^2 / ||W||^2``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from statistics import mean

ARMS = ("splitnet", "dense", "random", "cluster", "thin")
POOLED = ("dense", "thin")


def arms(metrics: dict) -> dict[str, dict]:
    """Per arm of one run's ``metrics.json``, its result dict (SplitNet's gathered from the top level)."""
    keys = ("test_acc", "test_acc_before_split", "test_acc_at_split", "test_acc_anneal_start", "off_block_fraction",
            "off_block_fraction_anneal_start", "nmi_coarse")
    main = {k: metrics.get(k) for k in keys}
    main["params"] = metrics["params_split"]
    return {"splitnet": main, **metrics["baselines"]}


def variant(run: str) -> str:
    """``fair_anneal3_s1`` -> ``fair_anneal3``: the run name without its seed suffix."""
    return re.sub(r"_s\d+$", "", run)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def mean_fraction(fractions: dict | None) -> str:
    return "-" if not fractions else f"{mean(fractions.values()):.3f}"


def table(runs: dict[str, dict]) -> str:
    lines = ["| run | arm | test acc | params | % of dense | NMI vs superclasses | anneal start | before split "
             "| at split | off-block at anneal start | off-block at split |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, metrics in runs.items():
        dense = metrics["params_dense"]
        for arm, r in arms(metrics).items():
            nmi = r.get("nmi_coarse")
            lines.append(f"| {name} | {arm} | {pct(r['test_acc'])} | {r['params']:,} | {100 * r['params'] / dense:.1f} "
                         f"| {'-' if nmi is None else f'{nmi:.3f}'} | {pct(r.get('test_acc_anneal_start'))} "
                         f"| {pct(r.get('test_acc_before_split'))} | {pct(r.get('test_acc_at_split'))} "
                         f"| {mean_fraction(r.get('off_block_fraction_anneal_start'))} "
                         f"| {mean_fraction(r.get('off_block_fraction'))} |")
    return "\n".join(lines)


def accuracies(runs: dict[str, dict]) -> dict[tuple[str, str], list[float]]:
    """``(variant, arm)`` -> the test accuracies over that variant's seeds."""
    found: dict[tuple[str, str], list[float]] = {}
    for name, metrics in runs.items():
        for arm, r in arms(metrics).items():
            found.setdefault((variant(name), arm), []).append(r["test_acc"])
    return found


def mean_table(runs: dict[str, dict]) -> str:
    lines = ["| variant | arm | seeds | mean test acc | vs dense | vs thin | vs random (same variant) |",
             "|---|---|---|---|---|---|---|"]
    found = accuracies(runs)
    pooled = {arm: mean(v for (_, a), values in found.items() if a == arm for v in values)
              for arm in POOLED if any(a == arm for _, a in found)}
    for (name, arm), values in sorted(found.items(), key=lambda item: (item[0][0], ARMS.index(item[0][1]))):
        value = mean(values)
        random = found.get((name, "random"))

        def delta(ref):
            return "-" if ref is None else f"{100 * (value - ref):+.2f}"
        lines.append(f"| {name} | {arm} | {len(values)} | {pct(value)} | {delta(pooled.get('dense'))} "
                     f"| {delta(pooled.get('thin'))} | {delta(mean(random) if random else None)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    runs = {path.name: json.loads((path / "metrics.json").read_text()) for path in args.runs}
    print(table(runs))
    print()
    print(mean_table(runs))


if __name__ == "__main__":
    main()
