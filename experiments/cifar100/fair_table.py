"""Markdown tables of fair-protocol runs: one row per arm, plus the mean over seeds.

    python experiments/cifar100/fair_table.py experiments/cifar100/fair_s0 experiments/cifar100/fair_s1

Each argument is a run folder with the ``metrics.json`` of ``splitkern train`` (a copy of the
small files is enough). Accuracies in percent; params as a share of the dense model too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

ARMS = ("splitnet", "dense", "random", "cluster", "thin")


def arms(metrics: dict) -> dict[str, dict]:
    main = {k: metrics[k] for k in ("test_acc", "test_acc_before_split", "test_acc_at_split")}
    main.update(params=metrics["params_split"], nmi_coarse=metrics.get("nmi_coarse"))
    return {"splitnet": main, **metrics["baselines"]}


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table(runs: dict[str, dict]) -> str:
    lines = ["| run | arm | test acc | params | % of dense | NMI vs superclasses | before split | at split |",
             "|---|---|---|---|---|---|---|---|"]
    for name, metrics in runs.items():
        dense = metrics["params_dense"]
        for arm, r in arms(metrics).items():
            nmi = r.get("nmi_coarse")
            lines.append(f"| {name} | {arm} | {pct(r['test_acc'])} | {r['params']:,} | {100 * r['params'] / dense:.1f} "
                         f"| {'-' if nmi is None else f'{nmi:.3f}'} | {pct(r.get('test_acc_before_split'))} "
                         f"| {pct(r.get('test_acc_at_split'))} |")
    return "\n".join(lines)


def mean_table(runs: dict[str, dict]) -> str:
    lines = ["| arm | seeds | mean test acc | vs dense | vs random |", "|---|---|---|---|---|"]
    per_arm = {arm: [arms(m)[arm]["test_acc"] for m in runs.values() if arm in arms(m)] for arm in ARMS}
    reference = {arm: mean(v) for arm, v in per_arm.items() if v}
    for arm, values in per_arm.items():
        if not values:
            continue
        delta = {ref: f"{100 * (reference[arm] - reference[ref]):+.2f}" if ref in reference else "-"
                 for ref in ("dense", "random")}
        lines.append(f"| {arm} | {len(values)} | {pct(reference[arm])} | {delta['dense']} | {delta['random']} |")
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
