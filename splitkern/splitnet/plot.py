"""``splitkern plot DIR``: figures of a ``splitkern train`` output folder.

:func:`plot` writes into ``DIR``, each figure only when its input file is there:

* ``assignments.png`` (from ``stage1.pt``): per assignment, its group probabilities (groups x features)
  with features sorted by hard group, group boundaries as vertical lines and one colorbar. Classes are
  sorted by superclass inside each group, with a strip under them naming each class's superclass,
  when the run's dataset has superclasses and can still be found (a moved dataset just leaves the
  strip out).
* ``block_diagonal.png`` (from ``stage1.pt``): |W| of every split layer (conv: mean over kernel taps),
  rows and columns in group order, the layer's group boundaries as lines: what the split keeps is
  the diagonal blocks.
* ``learning_curves.png`` (from ``log.csv``; ``metrics.json`` adds the accuracies right after the split):
  test accuracy and train cross-entropy per epoch, one line per arm, the split epoch dashed (old logs
  without ``train_ce`` show ``train_loss``, log scale), and the stage-1 regularisers when logged.
* ``off_block.png`` (from ``log.csv`` when it has ``off_block``; ``off_block.csv`` adds each layer): the
  off-block energy fraction ``||(1 - B) W||^2 / ||W||^2`` of the split layers' weights per epoch, one
  line per split arm (SplitNet's layers thin), and the classes / features that changed group per epoch.
* ``accuracy_vs_params.png`` (from ``metrics.json``): test accuracy of SplitNet and each baseline as bars
  labelled with their parameter counts, and as points of accuracy against parameters.

The ``*_figure`` functions build and return a :class:`matplotlib.figure.Figure` without pyplot (no
global backend is touched); :func:`plot` saves them. matplotlib is only needed here, imported on use.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from splitkern import models
from splitkern.splitnet import convert

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
FILES = {"assignments": "assignments.png", "block_diagonal": "block_diagonal.png",
         "learning_curves": "learning_curves.png", "accuracy": "accuracy_vs_params.png",
         "off_block": "off_block.png"}
ARM_COLORS = {"warmup": "0.35", "splitnet": "tab:red", "dense": "tab:blue", "random": "tab:purple",
              "cluster": "tab:orange", "thin": "tab:green"}
BOUNDARY = "group_boundary"  # gid of the group-boundary lines (tests find them by it)
SPLIT_LINE = "split_epoch"
MAX_SHARP = 256  # weight panels up to this many rows/columns are drawn cell by cell, larger ones smoothed


@dataclass
class Superclasses:
    """Which superclass each class belongs to (``fine_to_coarse[c]`` indexes ``names``)."""

    fine_to_coarse: list[int]
    names: list[str]


# --- inputs ----------------------------------------------------------------------------------------
def read_stage1(run_dir) -> tuple[torch.nn.Module, dict]:
    """The split-aware model saved at the end of stage 1 and the run's config (a TrainConfig as dict)."""
    path = Path(run_dir) / "stage1.pt"
    if not path.exists():
        raise ValueError(f"{run_dir}: no stage1.pt (is this a 'splitkern train' output folder?)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = blob["config"]
    classes = blob["state_dict"]["assignments.classes.logits"].shape[1]
    model = models.build(config["model"], classes, config["split"])
    model.load_state_dict(blob["state_dict"])
    return model, config


def load_stage1(run_dir) -> torch.nn.Module:
    """The split-aware model of ``run_dir/stage1.pt``."""
    return read_stage1(run_dir)[0]


def find_superclasses(source, num_classes: int, run_dir=None) -> Superclasses | None:
    """The superclasses of dataset ``source`` (a TrainConfig ``data``), or None when it has none, cannot be
    found (relative paths are tried from the working directory, then from ``run_dir``) or does not have
    ``num_classes`` classes. A folder's ``meta.json`` is read directly; otherwise the dataset is loaded."""
    from splitkern import data

    if source is None:
        return None
    if str(source) == "synthetic":
        candidates = ["synthetic"]
    else:
        path = Path(source)
        candidates = [p for p in [path] + ([Path(run_dir) / path] if run_dir and not path.is_absolute() else [])
                      if p.is_dir()]
    for candidate in candidates:
        meta = Path(candidate) / "meta.json" if candidate != "synthetic" else None
        try:
            if meta is not None and meta.is_file():
                info = json.loads(meta.read_text())
                fine_to_coarse, names = list(info.get("fine_to_coarse", [])), list(info.get("coarse_names", []))
            else:
                dataset = data.load(candidate)
                fine_to_coarse, names = list(dataset.fine_to_coarse), list(dataset.coarse_names)
        except (ValueError, OSError):
            continue
        if len(fine_to_coarse) != num_classes or not fine_to_coarse:
            return None
        count = max(fine_to_coarse) + 1
        return Superclasses(fine_to_coarse, names if len(names) >= count else [str(c) for c in range(count)])
    return None


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def read_log(path) -> list[dict]:
    """``log.csv`` rows: ``run``, ``phase`` as text, ``epoch`` as int, every other column a float or None
    (empty cell). Reads both layouts (with or without ``train_ce``/``r_*``/``seconds``)."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            epoch = _number(raw.get("epoch"))
            if epoch is None or not raw.get("run"):
                continue
            row = {key: _number(value) for key, value in raw.items() if key not in ("run", "phase") and key}
            row.update(run=raw["run"], phase=raw.get("phase") or "", epoch=int(epoch))
            rows.append(row)
    return rows


def read_metrics(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


# --- helpers -----------------------------------------------------------------------------------------
def group_boundaries(ids: torch.Tensor, groups: int) -> list[int]:
    """Positions between consecutive groups once ``ids`` are sorted: cumulative group sizes strictly
    inside ``(0, len(ids))`` (an empty group adds none)."""
    sizes = torch.bincount(ids.cpu(), minlength=groups)
    return sorted({int(c) for c in sizes.cumsum(0)[:-1].tolist() if 0 < c < len(ids)})


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _arm_color(arm: str, index: int) -> str:
    return ARM_COLORS.get(arm, f"C{index % 10}")


def _keys_in_forward_order(model) -> list[str]:
    keys = []
    for role in model.split_plan.layers.values():
        keys += [k for k in (role.in_key, role.out_key) if k not in keys]
    return keys + [k for k in model.assignments if k not in keys]


def _feature_order(hard: torch.Tensor, coarse: list[int] | None) -> list[int]:
    """Indices sorted by hard group, then by superclass when given, then by index."""
    ids = hard.tolist()
    return sorted(range(len(ids)), key=lambda i: (ids[i], coarse[i] if coarse else 0, i))


def _runs(values: list[int], breaks: list[int]) -> list[tuple[int, int, int]]:
    """``(start, stop, value)`` of runs of equal consecutive values, also cut at ``breaks``."""
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start] or i in breaks:
            runs.append((start, i, values[start]))
            start = i
    return runs


# --- figures ---------------------------------------------------------------------------------------------
def _unit_norm():
    """One [0, 1] normalisation shared by every image of a figure, so its one colorbar is theirs."""
    from matplotlib.colors import Normalize

    return Normalize(0, 1)


def _assignment_panel(ax: Axes, probs: torch.Tensor, order: list[int], bounds: list[int], title: str,
                      xlabel: str | None, norm):
    groups, features = probs.shape
    image = ax.imshow(probs[:, order].numpy(), aspect="auto", cmap="viridis", norm=norm,
                      interpolation="nearest", extent=(0, features, groups - 0.5, -0.5))
    for x in bounds:
        ax.axvline(x, color="white", lw=1.5, gid=BOUNDARY)
    ax.set_yticks(range(groups))
    ax.set_ylabel("group", fontsize=8)
    ax.set_xticks([0, *bounds, features])
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8, loc="left")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    return image


def _superclass_strip(ax: Axes, coarse: list[int], names: list[str], bounds: list[int]) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    count = len(names)
    palette = colormaps["tab20" if count > 10 else "tab10"]
    colors = [palette(c % palette.N) for c in range(count)]
    ax.imshow([coarse], aspect="auto", cmap=ListedColormap(colors), vmin=-0.5, vmax=count - 0.5,
              interpolation="nearest", extent=(0, len(coarse), 1, 0))
    for x in bounds:
        ax.axvline(x, color="black", lw=1.5, gid=BOUNDARY)
    for start, _, _ in _runs(coarse, bounds)[1:]:
        ax.axvline(start, color="white", lw=0.5)
    runs = _runs(coarse, bounds)
    ax.set_xticks([(a + b) / 2 for a, b, _ in runs], [names[c] for _, _, c in runs], rotation=90, fontsize=6)
    ax.set_yticks([])
    ax.set_ylabel("super-\nclass", fontsize=7, rotation=0, ha="right", va="center")
    ax.set_xlim(0, len(coarse))


def assignments_figure(model, superclasses: Superclasses | None = None) -> Figure:
    """One panel per assignment (forward order) of its ``probs()`` with features sorted by hard group and the
    group boundaries as vertical lines; with ``superclasses``, the classes are sorted by superclass inside
    each group and a strip under them shows each class's superclass. One probability colorbar.

    Each panel's axes has the assignment key as its label (``ax.get_label()``), the strip ``"KEY:superclass"``.
    """
    output_key = model.split_plan.output_key
    keys = _keys_in_forward_order(model)
    strip = superclasses is not None and model.assignments[output_key].features == len(superclasses.fine_to_coarse)
    rows, ratios = [], []
    for key in keys:
        rows.append(key)
        ratios.append(0.45 + 0.22 * model.assignments[key].groups)
        if key == output_key and strip:
            rows.append(f"{key}:superclass")
            ratios.append(0.18)
    fig = _figure(figsize=(11, 0.3 + sum(ratios) + (1.2 if strip else 0) + 0.45 * len(keys)))
    axes = fig.subplots(len(rows), 1, height_ratios=ratios, squeeze=False)[:, 0]
    by_label = dict(zip(rows, axes))
    norm = _unit_norm()
    for key in keys:
        assignment = model.assignments[key]
        probs = assignment.probs().detach().cpu()
        hard = assignment.hard().cpu()
        is_output = key == output_key
        coarse = superclasses.fine_to_coarse if is_output and strip else None
        order = _feature_order(hard, coarse)
        bounds = group_boundaries(hard, assignment.groups)
        noun = "classes" if is_output else "features"
        sizes = torch.bincount(hard, minlength=assignment.groups).tolist()
        title = f"{key}: {assignment.features} {noun}, group sizes {sizes}"
        xlabel = None if coarse else f"{noun} sorted by group"
        ax = by_label[key]
        ax.set_label(key)
        image = _assignment_panel(ax, probs, order, bounds, title, xlabel, norm)
        if coarse:
            ax.tick_params(labelbottom=False)  # the strip right under it carries the x labels
            strip_ax = by_label[f"{key}:superclass"]
            strip_ax.set_label(f"{key}:superclass")
            _superclass_strip(strip_ax, [coarse[i] for i in order], superclasses.names, bounds)
            strip_ax.set_xlabel(f"{noun} sorted by group, then superclass (strip: each class's superclass)",
                                fontsize=8)
    fig.colorbar(image, ax=list(axes), label="probability", fraction=0.02, pad=0.01)
    fig.suptitle("group assignments at the end of stage 1 (lines: group boundaries)", fontsize=10)
    return fig


def _reduced_weight(module) -> torch.Tensor:
    """|W| as (out, in): conv kernels averaged over their taps."""
    weight = module.weight.detach().float().abs().cpu()
    return weight.flatten(2).mean(2) if weight.dim() > 2 else weight


def block_diagonal_figure(model, layers: list[str] | None = None) -> Figure:
    """|W| of each split layer (default: all, in forward order) with rows and columns in group order
    (:func:`convert.channel_orders`) and the layer's group boundaries (at its split level) as lines.

    Each layer is divided by its own 99th percentile of |W| and clipped at 1, so all share one colorbar.
    Each panel's axes has the layer's module name as its label.
    """
    plan = model.split_plan
    names = layers if layers is not None else list(plan.layers)
    orders = convert.channel_orders(model)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(figsize=(3.3 * cols + 0.8, 2.9 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image, norm = None, _unit_norm()
    for ax, name in zip(axes, names):
        role = plan.layers[name]
        weight = _reduced_weight(model.get_submodule(name))[orders[role.out_key]][:, orders[role.in_key]]
        scale = torch.quantile(weight.flatten(), 0.99).clamp_min(1e-12)
        n_out, n_in = weight.shape
        smooth = max(n_out, n_in) > MAX_SHARP  # many weights per pixel: average them, do not pick one
        image = ax.imshow((weight / scale).clamp(max=1).numpy(), aspect="auto", cmap="magma", norm=norm,
                          interpolation="antialiased" if smooth else "nearest", extent=(0, n_in, n_out, 0))
        groups = plan.groups(role.level)
        for x in group_boundaries(convert.hard_groups(model, role.in_key, role.level), groups):
            ax.axvline(x, color="cyan", lw=1, gid=BOUNDARY)
        for y in group_boundaries(convert.hard_groups(model, role.out_key, role.level), groups):
            ax.axhline(y, color="cyan", lw=1, gid=BOUNDARY)
        ax.set_label(name)
        ax.set_title(f"{name} ({n_out}x{n_in}, {groups} groups)", fontsize=8)
        ax.set_xlabel(f"in: {role.in_key}", fontsize=7)
        ax.set_ylabel(f"out: {role.out_key}", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[:len(names)]), label="|W| / its layer's 99th percentile",
                 fraction=0.02, pad=0.01)
    fig.suptitle("|W| of the split layers, rows and columns sorted by group (conv: mean |W| over the kernel); "
                 "the split keeps the diagonal blocks", fontsize=10)
    return fig


def _curve(rows: list[dict], column: str, fallback: str | None = None) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in sorted(rows, key=lambda r: r["epoch"]):
        value = row.get(column)
        if value is None and fallback:
            value = row.get(fallback)
        if value is not None:
            xs.append(row["epoch"] + 1)
            ys.append(value)
    return xs, ys


def _at_split(metrics: dict | None) -> dict[str, float]:
    """Test accuracy right after the split (BN recalibrated, before stage 2) of each split arm in ``metrics``."""
    if not metrics:
        return {}
    arms = {"splitnet": metrics, **metrics.get("baselines", {})}
    return {arm: result["test_acc_at_split"] for arm, result in arms.items()
            if isinstance(result, dict) and result.get("test_acc_at_split") is not None}


REGULARISERS = {"r_d": "R_D", "r_w": "R_W", "r_e": "R_E"}


def learning_curves_figure(rows: list[dict], metrics: dict | None = None) -> Figure:
    """Test accuracy (%) and train cross-entropy against epochs completed, one line per arm (``run``) labelled
    with its name: a split arm's stage 2 continues its line. Dashed: the split (end of the last stage-1
    epoch); dotted: the end of the warm-up. With ``metrics`` (metrics.json), an ``x`` marks each split
    arm's accuracy right after the split. Old logs without ``train_ce`` plot ``train_loss`` (which includes
    the regulariser in stage 1) on a log scale. When the log has ``r_d``/``r_w``/``r_e`` values, a third
    panel shows those unweighted regularisers (lines labelled ``"ARM R_D"`` etc.)."""
    arms = list(dict.fromkeys(row["run"] for row in rows))
    has_ce = any(row.get("train_ce") is not None for row in rows)
    has_reg = any(row.get(column) is not None for row in rows for column in REGULARISERS)
    fig = _figure(figsize=(16 if has_reg else 12, 4.4))
    panels = fig.subplots(1, 3 if has_reg else 2, sharex=True, width_ratios=[1, 1, 0.8] if has_reg else None)
    acc_ax, loss_ax = panels[:2]
    for i, arm in enumerate(arms):
        mine = [row for row in rows if row["run"] == arm]
        style = dict(color=_arm_color(arm, i), marker="o", markersize=2.5, lw=1.4, label=arm)
        xs, ys = _curve(mine, "test_acc")
        if xs:
            acc_ax.plot(xs, [100 * y for y in ys], **style)
        xs, ys = _curve(mine, "train_ce" if has_ce else "train_loss", "train_loss" if has_ce else None)
        if xs:
            loss_ax.plot(xs, ys, **style)
        if has_reg:
            _regulariser_lines(panels[2], arm, mine, _arm_color(arm, i))
    split = min((row["epoch"] for row in rows if row["phase"] == "stage2"), default=None)
    warmup = max((row["epoch"] + 1 for row in rows if row["run"] == "warmup"), default=None)
    _at_split_markers(acc_ax, arms, split, _at_split(metrics))
    if has_reg:
        reg_ax = panels[2]
        reg_ax.legend(*reg_ax.get_legend_handles_labels(), fontsize=8)  # before the epoch markers join it
        reg_ax.set_ylabel("unweighted epoch mean")
        reg_ax.set_title("stage-1 regularisers", fontsize=10)
    for ax in panels:
        _epoch_markers(ax, warmup, split)
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title("test accuracy", fontsize=10)
    if has_ce:
        loss_ax.set_ylabel("train cross-entropy")
    else:
        loss_ax.set_yscale("log")
        loss_ax.set_ylabel("train loss (log scale; splitnet's stage 1: CE + regulariser)")
    loss_ax.set_title("training loss", fontsize=10)
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return fig


def _at_split_markers(ax: Axes, arms: list[str], split: int | None, at_split: dict[str, float]) -> None:
    """An ``x`` at the split epoch for each arm's accuracy right after the split."""
    if split is None:
        return
    marked = [(i, arm) for i, arm in enumerate(arms) if arm in at_split]
    for i, arm in marked:
        ax.plot([split], [100 * at_split[arm]], marker="x", markersize=7, mew=2, ls="none",
                color=_arm_color(arm, i), gid="at_split")
    if marked:
        ax.plot([], [], marker="x", ls="none", color="0.2", label="right after the split")


def _epoch_markers(ax: Axes, warmup: int | None, split: int | None) -> None:
    """The end of the warm-up (dotted) and the split (dashed), integer epoch ticks, a grid."""
    from matplotlib.ticker import MaxNLocator

    if warmup is not None:
        ax.axvline(warmup, color="0.5", ls=":", lw=1, label=f"end of warm-up (epoch {warmup})")
    if split is not None:
        ax.axvline(split, color="0.2", ls="--", lw=1, gid=SPLIT_LINE, label=f"split (after epoch {split})")
    ax.set_xlabel("epochs completed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _regulariser_lines(ax: Axes, arm: str, rows: list[dict], color: str) -> None:
    for (column, name), style in zip(REGULARISERS.items(), ("-", "--", "-.")):
        xs, ys = _curve(rows, column)
        if xs:
            ax.plot(xs, ys, ls=style, color=color, marker="o", markersize=2.5, lw=1.4, label=f"{arm} {name}")


def read_layer_fractions(path) -> dict[str, list[tuple[int, float]]]:
    """``off_block.csv``: per layer of SplitNet's run, ``(epoch, fraction)`` in file order."""
    layers: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            value, epoch = _number(raw.get("off_block_fraction")), _number(raw.get("epoch"))
            if raw.get("run") == "splitnet" and value is not None and epoch is not None:
                layers.setdefault(raw.get("layer", ""), []).append((int(epoch), value))
    return layers


def off_block_figure(rows: list[dict], layers: dict[str, list[tuple[int, float]]] | None = None) -> Figure:
    """Left: the mean off-block energy fraction of the split layers after each epoch, one line per arm that
    logged it (``off_block`` in ``log.csv``), SplitNet's per-layer fractions as thin lines when ``layers``
    (:func:`read_layer_fractions`) is given. Right: classes and features whose hard group changed in each
    epoch, per arm. x: epochs completed, as in :func:`learning_curves_figure`."""
    logged = [row for row in rows if row.get("off_block") is not None]
    if not logged:
        raise ValueError("rows: no off_block values (a log.csv written before the trainer logged them)")
    arms = list(dict.fromkeys(row["run"] for row in logged))
    fig = _figure(figsize=(12, 4.4))
    frac_ax, moved_ax = fig.subplots(1, 2, sharex=True)
    for name, points in (layers or {}).items():
        frac_ax.plot([e + 1 for e, _ in points], [v for _, v in points], color=ARM_COLORS["splitnet"], lw=0.6,
                     alpha=0.35, gid=f"layer:{name}")
    for i, arm in enumerate(arms):
        mine = [row for row in logged if row["run"] == arm]
        color = _arm_color(arm, i)
        frac_ax.plot(*_curve(mine, "off_block"), color=color, marker="o", markersize=3, lw=1.6, label=arm)
        for column, style in (("classes_moved", "-"), ("features_moved", "--")):
            xs, ys = _curve(mine, column)
            if xs:
                moved_ax.plot(xs, ys, ls=style, color=color, marker="o", markersize=3, lw=1.4,
                              label=f"{arm} {column.split('_')[0]}")
    anneal = min((row["epoch"] for row in rows if row["phase"] == "anneal"), default=None)
    for ax in (frac_ax, moved_ax):
        if anneal is not None:
            ax.axvline(anneal, color="0.4", ls="-.", lw=1, label=f"anneal starts (after epoch {anneal})")
        _epoch_markers(ax, None, None)
    frac_ax.set_ylabel("||(1-B) W||^2 / ||W||^2 (mean over split layers)")
    frac_ax.set_title("off-block energy fraction (what the split drops)", fontsize=10)
    moved_ax.set_ylabel("items that changed group in the epoch")
    moved_ax.set_title("classes / features moved", fontsize=10)
    for ax in (frac_ax, moved_ax):
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=8)
    return fig


def accuracy_arms(metrics: dict) -> list[tuple[str, float, int | None]]:
    """``(arm, test accuracy, parameters)`` of SplitNet then each baseline with a test accuracy."""
    arms = [("splitnet", metrics["test_acc"], metrics.get("params_split"))] if "test_acc" in metrics else []
    for name, result in metrics.get("baselines", {}).items():
        if "test_acc" in result:
            arms.append((name, result["test_acc"], result.get("params")))
    return arms


def accuracy_figure(metrics: dict) -> Figure:
    """Left: one bar per arm (SplitNet, then the baselines of ``metrics.json``): test accuracy in %, the arm's
    parameter count (and share of the dense model's) in its tick label, the accuracy above the bar.
    Right: the same arms as points of test accuracy against parameters, labelled."""
    arms = accuracy_arms(metrics)
    dense = metrics.get("params_dense") or metrics.get("baselines", {}).get("dense", {}).get("params")
    fig = _figure(figsize=(1.5 * max(len(arms), 3) + 5.5, 4.6))
    ax, scatter_ax = fig.subplots(1, 2, width_ratios=[1.5 * max(len(arms), 3), 4.5])
    labels = []
    for name, _, params in arms:
        label = name if params is None else f"{name}\n{params / 1e3:,.0f}k params"
        if params is not None and dense:
            label += f"\n({params / dense:.0%} of dense)"
        labels.append(label)
    heights = [100 * acc for _, acc, _ in arms]
    bars = ax.bar(range(len(arms)), heights, color=[_arm_color(name, i) for i, (name, _, _) in enumerate(arms)],
                  width=0.65)
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(range(len(arms)), labels, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, max(heights, default=1) * 1.12)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("test accuracy per arm", fontsize=10)
    _accuracy_scatter(scatter_ax, arms)
    about = [str(metrics[k]) for k in ("model", "spec") if metrics.get(k)]
    if metrics.get("data"):
        about.append(Path(str(metrics["data"])).name)
    if about:
        fig.suptitle(", ".join(about), fontsize=10)
    return fig


def _accuracy_scatter(ax: Axes, arms: list[tuple[str, float, int | None]]) -> None:
    points = [(name, 100 * acc, params) for name, acc, params in arms if params is not None]
    for i, (name, acc, params) in enumerate(points):
        ax.plot([params / 1e3], [acc], "o", color=_arm_color(name, i), markersize=7)
        ax.annotate(name, (params / 1e3, acc), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    if points:
        low, high = min(p for *_, p in points) / 1e3, max(p for *_, p in points) / 1e3
        margin = 0.1 * (high - low) or 0.1 * high
        ax.set_xlim(low - margin, high + 2.5 * margin)  # room for the labels on the right
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against parameters", fontsize=10)
    ax.grid(alpha=0.3)


# --- the command -----------------------------------------------------------------------------------------
def _save(fig: Figure, path: Path, palette: bool = False) -> Path:
    """Save as PNG at :data:`DPI`; ``palette``: as a 256-colour PNG (no dithering), which keeps figures of
    noisy weight images a few hundred KB smaller at no visible cost."""
    if not palette:
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
        return path
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        quantized = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        quantized.save(path, format="png", optimize=True)
    return path


def plot(run_dir) -> list[Path]:
    """Draw the figures of a ``splitkern train`` folder into it; return the paths written.

    Writes ``assignments.png`` and ``block_diagonal.png`` when ``stage1.pt`` exists,
    ``learning_curves.png`` when ``log.csv`` does and ``accuracy_vs_params.png`` when ``metrics.json``
    does (see the module docstring). Raises ``ValueError`` naming the folder when none of the three is there.
    The superclass strip needs the run's dataset (``config["data"]``); when it has moved, the strip is left out.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("splitkern plot needs matplotlib (pip install matplotlib)") from exc
    run_dir = Path(run_dir)
    stage1, log, metrics = (run_dir / name for name in ("stage1.pt", "log.csv", "metrics.json"))
    if not (stage1.exists() or log.exists() or metrics.exists()):
        raise ValueError(f"{run_dir}: no stage1.pt, log.csv or metrics.json (is this a 'splitkern train' "
                         "output folder?)")
    written = []
    if stage1.exists():
        model, config = read_stage1(run_dir)
        classes = model.assignments[model.split_plan.output_key].features
        superclasses = find_superclasses(config.get("data"), classes, run_dir)
        written.append(_save(assignments_figure(model, superclasses), run_dir / FILES["assignments"]))
        written.append(_save(block_diagonal_figure(model), run_dir / FILES["block_diagonal"], True))
    summary = read_metrics(metrics) if metrics.exists() else None
    if log.exists():
        rows = read_log(log)
        if rows:
            written.append(_save(learning_curves_figure(rows, summary), run_dir / FILES["learning_curves"]))
        if any(row.get("off_block") is not None for row in rows):
            per_layer = run_dir / "off_block.csv"
            layers = read_layer_fractions(per_layer) if per_layer.exists() else None
            written.append(_save(off_block_figure(rows, layers), run_dir / FILES["off_block"]))
    if summary is not None:
        if accuracy_arms(summary):
            written.append(_save(accuracy_figure(summary), run_dir / FILES["accuracy"]))
    return written
