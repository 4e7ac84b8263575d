"""``splitkern plot``: the figures checked through their matplotlib artists (not pixels)."""

import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from splitkern import data, models  # noqa: E402
from splitkern.splitnet import plot as plotting  # noqa: E402
from splitkern.splitnet.plot import (BOUNDARY, SPLIT_LINE, Superclasses, accuracy_figure,  # noqa: E402
                                     assignments_figure, block_diagonal_figure, find_superclasses,
                                     learning_curves_figure, plot, read_log)

CLASSES = 16  # the synthetic hierarchy's: 4 superclasses of 4
NEW_FIELDS = ["run", "phase", "epoch", "lr", "train_ce", "r_d", "r_w", "r_e", "train_loss", "test_acc", "nmi_coarse",
              "seconds"]
OLD_FIELDS = ["run", "phase", "epoch", "lr", "train_loss", "test_acc", "nmi_coarse"]


def uneven_model(split="2-2", seed=0, name="wrn10-2"):
    """A tiny split-aware WRN whose assignments have uneven, shuffled hard groups and soft probabilities."""
    model = models.build(name, CLASSES, split)
    gen = torch.Generator().manual_seed(seed)
    for assignment in model.assignments.values():
        groups = torch.randint(0, assignment.groups, (assignment.features,), generator=gen)
        groups[:assignment.groups] = torch.arange(assignment.groups)  # no group empty
        assignment.set_hard(groups, confidence=2.0)
        with torch.no_grad():
            assignment.logits.add_(0.5 * torch.randn(assignment.logits.shape, generator=gen))
    return model


def expected_boundaries(ids: torch.Tensor, groups: int) -> list[float]:
    sizes = torch.bincount(ids, minlength=groups)
    return [float(c) for c in np.cumsum(sizes.numpy())[:-1] if 0 < c < len(ids)]


def boundary_positions(ax, vertical=True) -> list[float]:
    lines = [line for line in ax.get_lines() if line.get_gid() == BOUNDARY]
    # axvline: x data constant; axhline: y data constant
    positions = [line.get_xdata()[0] for line in lines if line.get_xdata()[0] == line.get_xdata()[1]] if vertical \
        else [line.get_ydata()[0] for line in lines if line.get_ydata()[0] == line.get_ydata()[1]]
    return sorted(float(p) for p in positions)


def the_colorbar(fig):
    """The figure's one colorbar: it must be in the figure and be every image's (same norm and colormap)."""
    colorbars = [image.colorbar for ax in fig.axes for image in ax.get_images() if image.colorbar is not None]
    assert len(colorbars) == 1
    (colorbar,) = colorbars
    assert colorbar.ax in fig.axes
    return colorbar


def axes_by_label(fig) -> dict:
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label()}


@pytest.fixture(scope="module")
def model():
    return uneven_model()


@pytest.fixture(scope="module")
def synthetic_superclasses():
    return find_superclasses("synthetic", CLASSES)


def write_log(path, fields, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})


def new_layout_rows():
    """warmup 0-1, splitnet stage1 2-3 + stage2 4-5, dense 2-5, random stage2 4-5, thin 0-5 (empty cells included)."""
    rows = []

    def add(run, phase, epochs, reg=False):
        for e in epochs:
            acc = round(0.1 + 0.05 * e + 0.01 * len(run), 4)
            rows.append(dict(run=run, phase=phase, epoch=e, lr=0.1, train_ce=round(3 - 0.2 * e - 0.01 * len(run), 4),
                             r_d=0.5 if reg else "", r_w=0.2 if reg else "", r_e=0.1 if reg else "",
                             train_loss=round(3.8 - 0.2 * e, 4), test_acc=acc,
                             nmi_coarse=0.3 if run == "splitnet" else "", seconds=1.5))
    add("warmup", "train", [0, 1])
    add("splitnet", "stage1", [2, 3], reg=True)
    add("dense", "stage1", [2, 3])
    add("splitnet", "stage2", [4, 5])
    add("dense", "stage2", [4, 5])
    add("random", "stage2", [4, 5])
    add("thin", "train", range(6))
    return rows


def curve_panels(fig) -> dict:
    """The learning-curve panels by title."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_xlabel() == "epochs completed"}


def arm_lines(ax, arms):
    return {line.get_label(): line for line in ax.get_lines() if line.get_label() in arms}


def metrics_dict():
    return {"model": "wrn10-2", "spec": "2-2", "data": "synthetic", "test_acc": 0.61, "test_acc_at_split": 0.3,
            "params_split": 1000, "params_dense": 2000,
            "baselines": {"dense": {"test_acc": 0.7, "params": 2000},
                          "random": {"test_acc": 0.55, "params": 990, "test_acc_at_split": 0.05},
                          "thin": {"test_acc": 0.6, "params": 1010}}}


# --- assignments -------------------------------------------------------------------------------------------
def test_assignment_panels_have_sorted_groups_boundaries_labels_and_a_colorbar(model):
    fig = assignments_figure(model)
    panels = axes_by_label(fig)
    assert set(model.assignments) <= set(panels)
    for key, assignment in model.assignments.items():
        ax = panels[key]
        probs = assignment.probs().detach()
        hard = probs.argmax(0)
        assert boundary_positions(ax) == expected_boundaries(hard, assignment.groups)
        assert len(boundary_positions(ax)) == assignment.groups - 1
        (image,) = ax.get_images()
        shown = np.asarray(image.get_array())
        assert shown.shape == tuple(probs.shape)
        assert np.all(np.diff(shown.argmax(0)) >= 0), "columns must be sorted by hard group"
        np.testing.assert_allclose(np.sort(shown, axis=1), np.sort(probs.numpy(), axis=1), rtol=1e-6)
        assert ax.get_ylabel() == "group"
        assert list(ax.get_yticks()) == list(range(assignment.groups))
        noun = "classes" if key == model.split_plan.output_key else "features"
        assert ax.get_xlabel() == f"{noun} sorted by group"
        colorbar = the_colorbar(fig)
        assert image.norm is colorbar.norm and image.get_cmap().name == colorbar.cmap.name == "viridis"
        assert (colorbar.norm.vmin, colorbar.norm.vmax) == (0, 1)
        assert colorbar.ax.get_ylabel() == "probability"


def test_synthetic_classes_get_a_superclass_strip(model, synthetic_superclasses):
    dataset = data.load("synthetic")
    assert synthetic_superclasses == Superclasses(list(dataset.fine_to_coarse), list(dataset.coarse_names))
    fig = assignments_figure(model, synthetic_superclasses)
    panels = axes_by_label(fig)
    key = model.split_plan.output_key
    strip = panels[f"{key}:superclass"]
    classes = model.assignments[key]
    hard = classes.hard()
    # the classes heat map shows its columns in the strip's order: recover it from the sorted hard groups
    coarse_shown = np.asarray(strip.get_images()[0].get_array())[0].astype(int)
    groups_shown = np.asarray(panels[key].get_images()[0].get_array()).argmax(0)
    assert sorted(zip(groups_shown.tolist(), coarse_shown.tolist())) == \
        sorted(zip(hard.tolist(), [dataset.fine_to_coarse[c] for c in range(CLASSES)]))
    assert list(zip(groups_shown, coarse_shown)) == sorted(zip(groups_shown, coarse_shown)), \
        "classes sorted by group, then superclass"
    assert boundary_positions(strip) == expected_boundaries(hard, classes.groups)
    labels = [t.get_text() for t in strip.get_xticklabels()]
    assert set(labels) == {dataset.coarse_names[c] for c in coarse_shown}
    assert "superclass" in strip.get_xlabel()
    # the other assignments get no strip
    assert not [label for label in panels if label.endswith(":superclass") and label != f"{key}:superclass"]


def test_find_superclasses_reads_meta_and_skips_what_is_missing(tmp_path):
    assert find_superclasses(tmp_path / "moved_away", CLASSES) is None
    assert find_superclasses(None, CLASSES) is None
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"fine_names": list("abcd"), "coarse_names": ["x", "y"],
                                                  "fine_to_coarse": [1, 0, 1, 0]}))
    assert find_superclasses(folder, 4) == Superclasses([1, 0, 1, 0], ["x", "y"])
    assert find_superclasses(folder, 5) is None  # not this run's dataset
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert find_superclasses("../shards", 4, run_dir) == Superclasses([1, 0, 1, 0], ["x", "y"])


# --- |W| in block-diagonal order ----------------------------------------------------------------------------
def test_group_boundaries_skip_empty_groups():
    assert plotting.group_boundaries(torch.tensor([3, 1, 1, 3, 3]), 4) == [2]  # sizes 0, 2, 0, 3
    assert plotting.group_boundaries(torch.tensor([0, 0, 0]), 2) == []
    # superclass runs of the strip: a superclass on both sides of a group boundary is two runs
    assert plotting._runs([0, 0, 1, 1, 1], [3]) == [(0, 2, 0), (2, 3, 1), (3, 5, 1)]


@pytest.mark.parametrize("split, name", [("2-2", "wrn10-2"), ("2-4", "wrn16-1")])
def test_weight_panels_are_block_sorted_with_boundaries_and_a_colorbar(split, name):
    """In the tree (2-4), stage-3 layers read and write 4-group assignments but split into 2 blocks."""
    model = uneven_model(split, seed=1, name=name)
    plan = model.split_plan
    fig = block_diagonal_figure(model)
    panels = axes_by_label(fig)
    assert set(plan.layers) <= set(panels)
    assert "fc" in panels
    for name, role in plan.layers.items():
        ax = panels[name]
        groups = plan.groups(role.level)
        ratio_in = model.assignments[role.in_key].groups // groups
        ratio_out = model.assignments[role.out_key].groups // groups
        in_ids = model.assignments[role.in_key].probs().argmax(0) // ratio_in
        out_ids = model.assignments[role.out_key].probs().argmax(0) // ratio_out
        assert boundary_positions(ax, vertical=True) == expected_boundaries(in_ids, groups)
        assert boundary_positions(ax, vertical=False) == expected_boundaries(out_ids, groups)
        (image,) = ax.get_images()
        weight = model.get_submodule(name).weight.detach().abs()
        weight = weight.flatten(2).mean(2) if weight.dim() > 2 else weight
        native_in = model.assignments[role.in_key].probs().argmax(0)
        native_out = model.assignments[role.out_key].probs().argmax(0)
        rows = torch.argsort(native_out, stable=True)
        cols = torch.argsort(native_in, stable=True)
        expected = weight[rows][:, cols]
        expected = (expected / torch.quantile(expected.flatten(), 0.99)).clamp(max=1)
        np.testing.assert_allclose(np.asarray(image.get_array()), expected.numpy(), rtol=1e-5, atol=1e-6)
        colorbar = the_colorbar(fig)
        assert image.norm is colorbar.norm and (colorbar.norm.vmin, colorbar.norm.vmax) == (0, 1)
        assert ax.get_xlabel() == f"in: {role.in_key}" and ax.get_ylabel() == f"out: {role.out_key}"


# --- learning curves -----------------------------------------------------------------------------------------
def test_learning_curves_new_layout_one_line_per_arm(tmp_path):
    rows = new_layout_rows()
    path = tmp_path / "log.csv"
    write_log(path, NEW_FIELDS, rows)
    parsed = read_log(path)
    assert parsed[0]["r_d"] is None and parsed[2]["r_d"] == 0.5 and parsed[0]["nmi_coarse"] is None
    fig = learning_curves_figure(parsed, metrics_dict())
    panels = curve_panels(fig)
    assert set(panels) == {"test accuracy", "training loss", "stage-1 regularisers"}
    acc_ax, loss_ax, reg_ax = panels["test accuracy"], panels["training loss"], panels["stage-1 regularisers"]
    arms = ["warmup", "splitnet", "dense", "random", "thin"]
    for ax, column, scale in ((acc_ax, "test_acc", 100), (loss_ax, "train_ce", 1)):
        lines = arm_lines(ax, arms)
        assert sorted(lines) == sorted(arms)
        assert len([line for line in ax.get_lines() if line.get_label() in arms]) == len(arms)
        for arm, line in lines.items():
            mine = sorted((r for r in rows if r["run"] == arm), key=lambda r: r["epoch"])
            np.testing.assert_array_equal(line.get_xdata(), [r["epoch"] + 1 for r in mine])
            np.testing.assert_allclose(line.get_ydata(), [scale * r[column] for r in mine])
        (split,) = [line for line in ax.get_lines() if line.get_gid() == SPLIT_LINE]
        assert split.get_xdata()[0] == 4 and split.get_linestyle() == "--"
    assert loss_ax.get_ylabel() == "train cross-entropy" and loss_ax.get_yscale() == "linear"
    assert "test accuracy" in acc_ax.get_ylabel()
    markers = {tuple(line.get_ydata()) for line in acc_ax.get_lines() if line.get_gid() == "at_split"}
    assert markers == {(30.0,), (5.0,)}  # splitnet and random right after the split
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(arms) <= set(legend_labels)
    regularisers = {line.get_label(): line for line in reg_ax.get_lines() if line.get_label().startswith("splitnet")}
    assert sorted(regularisers) == ["splitnet R_D", "splitnet R_E", "splitnet R_W"]  # only splitnet's stage 1 has them
    np.testing.assert_array_equal(regularisers["splitnet R_W"].get_xdata(), [3, 4])
    np.testing.assert_allclose(regularisers["splitnet R_W"].get_ydata(), [0.2, 0.2])


def test_learning_curves_old_layout_uses_train_loss(tmp_path):
    rows = [{k: v for k, v in row.items() if k in OLD_FIELDS} for row in new_layout_rows()]
    path = tmp_path / "log.csv"
    write_log(path, OLD_FIELDS, rows)
    fig = learning_curves_figure(read_log(path))
    panels = curve_panels(fig)
    assert set(panels) == {"test accuracy", "training loss"}  # no regulariser columns, no third panel
    acc_ax, loss_ax = panels["test accuracy"], panels["training loss"]
    lines = arm_lines(loss_ax, {"splitnet", "thin"})
    mine = sorted((r for r in rows if r["run"] == "splitnet"), key=lambda r: r["epoch"])
    np.testing.assert_allclose(lines["splitnet"].get_ydata(), [r["train_loss"] for r in mine])
    assert "train loss" in loss_ax.get_ylabel() and loss_ax.get_yscale() == "log"
    assert len(arm_lines(acc_ax, {"warmup", "splitnet", "dense", "random", "thin"})) == 5


# --- accuracy against parameters -----------------------------------------------------------------------------
def test_accuracy_bars_one_per_arm_at_test_accuracy():
    metrics = metrics_dict()
    fig = accuracy_figure(metrics)
    bar_ax = next(ax for ax in fig.axes if ax.patches)
    heights = [patch.get_height() for patch in bar_ax.patches]
    expected = [61.0, 70.0, 55.0, 60.0]  # splitnet, then the baselines in metrics.json's order
    np.testing.assert_allclose(heights, expected)
    labels = [t.get_text() for t in bar_ax.get_xticklabels()]
    for label, (arm, params) in zip(labels, [("splitnet", 1000), ("dense", 2000), ("random", 990), ("thin", 1010)]):
        assert label.startswith(arm) and f"{params / 1e3:,.0f}k params" in label
    assert "(50% of dense)" in labels[0]
    assert bar_ax.get_ylabel() == "test accuracy (%)"


# --- plot() on a run folder --------------------------------------------------------------------------------------
def write_run(folder, model, data_source="synthetic", split="2-2"):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": "wrn10-2", "split": split, "data": str(data_source), "stage1_epochs": 4, "stage2_epochs": 2}
    torch.save({"config": config, "state_dict": model.state_dict()}, folder / "stage1.pt")
    write_log(folder / "log.csv", NEW_FIELDS, new_layout_rows())
    (folder / "metrics.json").write_text(json.dumps(metrics_dict()))


def test_plot_writes_the_four_figures_deterministically(tmp_path, model):
    write_run(tmp_path, model)
    paths = plot(tmp_path)
    assert [p.name for p in paths] == ["assignments.png", "block_diagonal.png", "learning_curves.png",
                                       "accuracy_vs_params.png"]
    first = {p.name: p.read_bytes() for p in paths}
    assert all(content.startswith(b"\x89PNG") for content in first.values())
    plot(tmp_path)
    assert {p.name: p.read_bytes() for p in paths} == first


def test_plot_skips_missing_inputs_and_moved_data(tmp_path, model, monkeypatch):
    seen = []
    original = plotting.assignments_figure
    monkeypatch.setattr(plotting, "assignments_figure", lambda m, s=None: seen.append(s) or original(m, s))
    write_run(tmp_path / "moved", model, data_source=tmp_path / "data_that_moved")
    assert len(plot(tmp_path / "moved")) == 4
    assert seen == [None]  # no superclasses, no error

    only_log = tmp_path / "only_log"
    only_log.mkdir()
    write_log(only_log / "log.csv", OLD_FIELDS, [{"run": "thin", "phase": "train", "epoch": 0, "test_acc": 0.1,
                                                   "train_loss": 3.0}])
    assert [p.name for p in plot(only_log)] == ["learning_curves.png"]

    only_metrics = tmp_path / "only_metrics"
    only_metrics.mkdir()
    (only_metrics / "metrics.json").write_text(json.dumps(metrics_dict()))
    assert [p.name for p in plot(only_metrics)] == ["accuracy_vs_params.png"]

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(ValueError, match="not_a_run"):
        plot(empty)
