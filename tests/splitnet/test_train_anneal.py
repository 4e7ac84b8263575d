"""The trainer's block bookkeeping (off-block fraction, moved groups) and its anneal (``anneal_epochs``)."""

import csv
import json

import pytest
import torch

from splitkern import data
from splitkern.cli import _parser, _train_config
from splitkern.splitnet.blocks import BlockAnneal
from splitkern.splitnet.plot import plot
from splitkern.splitnet.train import Phase, Trainer, run
from tests.splitnet.test_train import config


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic_hierarchy(seed=0, train_per_class=6, test_per_class=3)


def rows(folder, name="log.csv"):
    with (folder / name).open() as f:
        return list(csv.DictReader(f))


ANNEALED = dict(stage1_epochs=3, warmup_epochs=1, anneal_epochs=1, stage2_epochs=1)


def test_stage1_logs_off_block_fraction_and_moved_groups(tmp_path, tiny):
    metrics = run(config(tmp_path, stage1_epochs=3, warmup_epochs=1, baselines=("random",)), tiny)
    log = rows(tmp_path)
    stage1 = [r for r in log if r["run"] == "splitnet" and r["phase"] == "stage1"]
    assert len(stage1) == 2
    for r in stage1:
        assert 0 < float(r["off_block"]) < 1
        assert int(r["classes_moved"]) >= 0 and int(r["features_moved"]) >= 0
    assert all(r["off_block"] == "" for r in log if r["run"] in ("warmup", "dense") or r["phase"] == "stage2")
    per_layer = rows(tmp_path, "off_block.csv")
    layers = {r["layer"] for r in per_layer}
    assert layers == set(metrics["off_block_fraction"])
    epoch2 = [float(r["off_block_fraction"]) for r in per_layer if r["run"] == "splitnet" and r["epoch"] == "2"]
    assert float(stage1[-1]["off_block"]) == pytest.approx(sum(epoch2) / len(epoch2))
    # without an anneal the split drops real mass, for SplitNet and for random groups alike
    assert all(0 < f < 1 for f in metrics["off_block_fraction"].values())
    assert all(0 < f < 1 for f in metrics["baselines"]["random"]["off_block_fraction"].values())
    assert "test_acc_anneal_start" not in metrics
    assert "off_block.png" in {p.name for p in plot(tmp_path)}


def test_anneal_ends_stage1_at_the_split_model_for_splitnet_and_random(tmp_path, tiny):
    metrics = run(config(tmp_path, baselines=("random", "cluster"), **ANNEALED), tiny)
    for result in (metrics, metrics["baselines"]["random"], metrics["baselines"]["cluster"]):
        assert all(f == 0 for f in result["off_block_fraction"].values())  # nothing left for the cut to drop
        assert any(f > 0 for f in result["off_block_fraction_anneal_start"].values())
        assert 0 <= result["test_acc_anneal_start"] <= 1
    log = rows(tmp_path)
    for arm in ("splitnet", "random", "cluster"):
        anneal = [r for r in log if r["run"] == arm and r["phase"] == "anneal"]
        assert [int(r["epoch"]) for r in anneal] == [2]
        assert float(anneal[0]["off_block"]) == 0 and anneal[0]["classes_moved"] == "0"
        assert anneal[0]["features_moved"] == "0" and anneal[0]["r_w"] == ""  # frozen groups, no regulariser
    assert [int(r["epoch"]) for r in log if r["run"] == "splitnet" and r["phase"] == "stage1"] == [1]
    # random / cluster branch off the dense arm where the anneal starts (epoch 2), not at the split
    assert [int(r["epoch"]) for r in log if r["run"] == "random"] == [2, 3]
    assert (tmp_path / "dense" / "stage1.after2.ckpt").exists()


def test_anneal_leaves_the_dense_and_thin_arms_unchanged(tmp_path, tiny):
    plain = run(config(tmp_path / "plain", baselines=("dense", "thin"), stage1_epochs=3, warmup_epochs=1), tiny)
    annealed = run(config(tmp_path / "annealed", baselines=("dense", "thin"), **ANNEALED), tiny)
    for arm in ("dense", "thin"):
        assert annealed["baselines"][arm]["test_acc"] == plain["baselines"][arm]["test_acc"]
    for arm in ("warmup", "dense", "thin"):
        def mine(folder):
            return [(r["epoch"], r["train_loss"], r["test_acc"]) for r in rows(folder) if r["run"] == arm]
        assert mine(tmp_path / "annealed") == mine(tmp_path / "plain"), arm


@pytest.mark.parametrize("kill_at", [4, 5])
def test_a_run_killed_in_the_anneal_resumes_exactly(tmp_path, tiny, monkeypatch, kill_at):
    cfg = dict(ANNEALED, stage1_epochs=4, anneal_epochs=2)
    reference = run(config(tmp_path / "a", **cfg), tiny)
    calls = {"n": 0}
    original = Trainer._train_epoch

    def dies_in_the_anneal(self, model, *args):
        calls["n"] += 1
        if calls["n"] == kill_at:  # warm-up, stage 1, anneal 1, anneal 2 (4: mid-anneal), stage 2 (5)
            raise KeyboardInterrupt
        return original(self, model, *args)
    monkeypatch.setattr(Trainer, "_train_epoch", dies_in_the_anneal)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "b", **cfg), tiny)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = run(config(tmp_path / "b", resume=True, **cfg), tiny)
    assert resumed["test_acc"] == reference["test_acc"]
    assert resumed["off_block_fraction_anneal_start"] == reference["off_block_fraction_anneal_start"]
    a = torch.load(tmp_path / "a" / "split.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "split.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_reaches_annealed_weights(tmp_path, tiny):
    trainer = Trainer(config(tmp_path), tiny)
    model = trainer.build()
    BlockAnneal(model, 0, 1)
    optimizer = trainer._optimizer(model, Phase("x", "anneal", 0, 1))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    originals = [model.get_submodule(n).parametrizations.weight.original for n in model.split_plan.layers]
    assert all(id(p) in decayed for p in originals)


def test_anneal_epochs_is_checked_and_parsed(tmp_path):
    tiny_data = data.synthetic_hierarchy(train_per_class=1, test_per_class=1)
    for bad in (3, -1):
        with pytest.raises(ValueError, match="anneal_epochs"):
            Trainer(config(tmp_path, stage1_epochs=3, warmup_epochs=1, anneal_epochs=bad), tiny_data)
    with pytest.raises(TypeError, match="anneal_epochs"):
        Trainer(config(tmp_path, anneal_epochs=1.5), tiny_data)
    cfg = _train_config(_parser().parse_args(["train", "--out", "x", "--epochs", "15", "--anneal-epochs", "2"]))
    assert (cfg.anneal_epochs, cfg.stage1_epochs, cfg.warmup_epochs) == (2, 8, 3)
    assert _train_config(_parser().parse_args(["train", "--out", "x", "--anneal-epochs", "0"])).anneal_epochs == 0
    args = ["train", "--out", "x", "--stage1-epochs", "10", "--warmup-epochs", "5", "--stage2-epochs", "5"]
    assert _train_config(_parser().parse_args(args)).anneal_epochs == 3  # a fifth of the run by default


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 6, 9, 15, 90])
def test_the_default_anneal_leaves_group_learning(epochs):
    cfg = _train_config(_parser().parse_args(["train", "--out", "x", "--epochs", str(epochs)]))
    learning = cfg.stage1_epochs - cfg.warmup_epochs - cfg.anneal_epochs
    assert learning >= 1 and cfg.anneal_epochs <= round(epochs / 5)
    assert cfg.anneal_epochs == round(epochs / 5) or epochs < 6


def test_anneal_shape_is_checked_parsed_and_used(tmp_path, tiny, monkeypatch):
    with pytest.raises(ValueError, match="anneal_shape"):
        Trainer(config(tmp_path, anneal_shape="cosine", **ANNEALED), tiny)
    args = ["train", "--out", "x", "--anneal-epochs", "1", "--anneal-shape", "quadratic"]
    assert _train_config(_parser().parse_args(args)).anneal_shape == "quadratic"
    assert _train_config(_parser().parse_args(["train", "--out", "x"])).anneal_shape == "linear"
    shapes = []
    original = BlockAnneal.__init__

    def recording(self, model, first_step, steps, shape="linear"):
        shapes.append(shape)
        original(self, model, first_step, steps, shape)

    monkeypatch.setattr(BlockAnneal, "__init__", recording)
    run(config(tmp_path, anneal_shape="quadratic", baselines=("random",), **ANNEALED), tiny)
    assert shapes == ["quadratic", "quadratic"]  # SplitNet's anneal and random's


def test_metrics_json_holds_the_per_layer_fractions(tmp_path, tiny):
    run(config(tmp_path, **ANNEALED), tiny)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["off_block_fraction"]) == set(saved["off_block_fraction_anneal_start"])
    assert saved["config"]["anneal_epochs"] == 1


def test_assign_init_balanced_starts_stage1_from_equal_class_groups(tmp_path, tiny):
    run(config(tmp_path, gammas=(0.0, 0.0, 0.0), assign_init="balanced"), tiny)  # no gamma: the init stays
    state = torch.load(tmp_path / "stage1.pt", weights_only=False)["state_dict"]
    assert torch.bincount(state["assignments.classes.logits"].argmax(0), minlength=4).tolist() == [4, 4, 4, 4]


def test_balanced_is_the_default_init():
    assert _train_config(_parser().parse_args(["train", "--out", "x"])).assign_init == "balanced"
    cfg = _train_config(_parser().parse_args(["train", "--out", "x", "--assign-init", "cluster"]))
    assert cfg.assign_init == "cluster"


@pytest.mark.parametrize("init", ["balanced", "cluster"])
def test_the_cluster_arm_splits_along_the_init_splitnet_starts_from(tmp_path, tiny, init):
    metrics = run(config(tmp_path, stage1_epochs=2, warmup_epochs=1, stage2_epochs=0, baselines=("cluster",),
                         assign_init=init), tiny)
    classes = metrics["baselines"]["cluster"]["group_sizes"]["classes"]
    if init == "balanced":
        assert classes == [4, 4, 4, 4]
    assert sum(classes) == 16
