import json

import numpy as np
import pytest
import torch

import splitkern
from splitkern import data
from splitkern.cli import _parser, _train_config
from splitkern.models import wrn
from splitkern.splitnet import grouping
from splitkern.splitnet.plot import plot
from splitkern.splitnet.train import Trainer, TrainConfig, dense_state, run


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic_hierarchy(seed=0, train_per_class=6, test_per_class=3)


def config(tmp_path, **kw):
    base = dict(model="wrn10-1", split="2-4", stage1_epochs=2, warmup_epochs=1, stage2_epochs=1, batch_size=32,
                out=str(tmp_path), tensorboard=False, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_run_writes_metrics_split_model_and_logs(tmp_path, tiny):
    metrics = run(config(tmp_path, baselines=("dense", "random", "cluster"), tensorboard=True), tiny)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_acc", "params_dense", "params_split", "nmi_coarse", "groups"):
        assert key in saved
    assert saved["params_split"] < saved["params_dense"]
    assert sorted(name for group in saved["groups"] for name in group) == sorted(tiny.fine_names)
    assert set(saved["baselines"]) == {"dense", "random", "cluster"}
    assert 0 <= metrics["nmi_coarse"] <= 1
    model = splitkern.load(tmp_path / "split.pt").eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("run,phase,epoch") and len(log) > 4
    for path in plot(tmp_path):
        assert path.stat().st_size > 0


def test_resume_after_a_kill_loses_nothing(tmp_path, tiny, monkeypatch):
    reference = run(config(tmp_path / "a"), tiny)

    calls = {"n": 0}
    original = Trainer._train_epoch

    def dies_on_third_epoch(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args)
    monkeypatch.setattr(Trainer, "_train_epoch", dies_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "b"), tiny)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed = run(config(tmp_path / "b", resume=True), tiny)
    assert resumed["test_acc"] == reference["test_acc"]
    a = torch.load(tmp_path / "a" / "split.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "split.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_configs(tmp_path):
    for kw, words in ((dict(warmup_epochs=2), "warmup_epochs"), (dict(baselines=("oracle",)), "baselines"),
                      (dict(model="resnet"), "wrn16-8"), (dict(assign_init="best"), "assign_init"),
                      (dict(precision="fp8"), "precision"), (dict(assign_confidence=0.0), "assign_confidence"),
                      (dict(gammas=(1, -1, 10)), "gammas"), (dict(gammas=(1, 1)), "gammas"),
                      (dict(gammas=(1, float("nan"), 10)), "gammas")):
        with pytest.raises(ValueError, match=words):
            Trainer(config(tmp_path, **kw), data.synthetic_hierarchy(train_per_class=1, test_per_class=1))


def test_bf16_run_and_dense_baseline_continue_the_warm_up(tmp_path, tiny):
    metrics = run(config(tmp_path, precision="bf16", baselines=("dense",)), tiny)
    assert 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["baselines"]["dense"]["test_acc"] <= 1
    rows = [line.split(",") for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    dense_epochs = [r for r in rows if r[0] == "dense"]
    assert len(dense_epochs) == 2  # stage1 - warmup + stage2: the same budget after the shared warm-up


def test_dense_state_loads_into_the_unsplit_model():
    split_model = wrn(10, 1, 16, split="2-4")
    dense = wrn(10, 1, 16)
    dense.load_state_dict(dense_state(split_model))  # strict: nothing missing, nothing extra
    assert torch.equal(dense.state_dict()["fc.weight"], split_model.state_dict()["fc.weight"])


def test_empty_groups_are_reported(tmp_path, tiny, monkeypatch):
    from splitkern.splitnet import convert
    model = wrn(10, 1, 16, split="2-4")
    key, assignment = next(iter(model.assignments.items()))
    assignment.set_hard(torch.zeros(assignment.features, dtype=torch.long))  # everything in group 0
    sizes = convert.group_sizes(model)[key]
    assert sizes[0] == assignment.features and sum(sizes) == assignment.features
    assert convert.empty_groups(model)[:len(sizes) - 1] == [f"{key}[{g}]" for g in range(1, len(sizes))]

    collapse = grouping.apply_groups
    monkeypatch.setattr(grouping, "apply_groups", lambda m, groups, confidence=4.0: collapse(
        m, {k: torch.zeros_like(v) for k, v in groups.items()}, 50.0))
    with pytest.warns(UserWarning, match="empty groups"):
        metrics = run(config(tmp_path, stage1_epochs=2, warmup_epochs=1), tiny)
    assert metrics["empty_groups"] and json.loads((tmp_path / "metrics.json").read_text())["empty_groups"]


def test_cli_epoch_split():
    args = _parser().parse_args(["train", "--out", "x", "--epochs", "15", "--baselines", "dense,cluster"])
    cfg = _train_config(args)
    assert (cfg.stage1_epochs, cfg.stage2_epochs, cfg.warmup_epochs) == (10, 5, 3)
    assert cfg.baselines == ("dense", "cluster")
    assert (cfg.precision, cfg.assign_confidence) == ("fp32", 1.0)
    args = ["train", "--out", "x", "--precision", "bf16", "--assign-confidence", "4", "--gammas", "1,0.1,10"]
    cfg = _train_config(_parser().parse_args(args))
    assert (cfg.precision, cfg.assign_confidence, cfg.gammas) == ("bf16", 4.0, (1.0, 0.1, 10.0))
    assert _train_config(_parser().parse_args(["train", "--out", "x"])).gammas == (1.0, 1.0, 10.0)
    with pytest.raises(ValueError, match="--gammas"):
        _train_config(_parser().parse_args(["train", "--out", "x", "--gammas", "1,one,10"]))


def test_zero_gammas_leave_the_assignments_at_their_init(tmp_path, tiny):
    """The classification loss never reaches the assignments: with every gamma 0 stage 1 cannot move them."""
    run(config(tmp_path, gammas=(0.0, 0.0, 0.0), assign_confidence=3.0), tiny)
    state = torch.load(tmp_path / "stage1.pt", weights_only=False)["state_dict"]
    logits = [v for k, v in state.items() if k.startswith("assignments.")]
    assert logits
    for alpha in logits:  # still the cluster init: 3.0 on the chosen group, 0 elsewhere
        assert torch.equal(alpha.sort(0).values[-1], torch.full_like(alpha[0], 3.0))
        assert torch.count_nonzero(alpha) == alpha.shape[1]


def test_nmi_reference_values():
    assert grouping.nmi([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert grouping.nmi([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0)
    # DESIGN.md: 4 superclass-pure groups of 100 classes vs 20 superclasses score 0.63
    coarse = np.arange(100) // 5
    assert grouping.nmi(coarse // 5, coarse) == pytest.approx(0.633, abs=1e-3)


def test_kmeans_separates_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(30) % 3
    points = centres[truth] + 0.1 * torch.randn(30, 2, generator=gen)
    found = grouping.kmeans(points, 3)
    assert grouping.nmi(found.numpy(), truth.numpy()) == pytest.approx(1.0)


def test_propagate_groups_follows_block_structure():
    model = wrn(10, 1, 4, split="2")
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[:2, :32] = 1.0  # classes 0, 1 read features 0..31
        model.fc.weight[2:, 32:] = 1.0
    groups = grouping.propagate_groups(model, torch.tensor([1, 1, 0, 0]))
    expected = torch.cat([torch.ones(32, dtype=torch.long), torch.zeros(32, dtype=torch.long)])
    assert torch.equal(groups["logits_in"], expected) and torch.equal(groups["classes"], torch.tensor([1, 1, 0, 0]))


def test_propagate_groups_gives_every_group_its_share():
    """A 75/25 class split must not hand every feature to the big group (it did: sum, not mean)."""
    torch.manual_seed(0)
    model = wrn(10, 1, 16, split="2-2")
    classes = torch.tensor([0] * 12 + [1] * 4)
    groups = grouping.propagate_groups(model, classes)
    for key, ids in groups.items():
        sizes = torch.bincount(ids, minlength=2)
        assert sizes.min() > 0, (key, sizes)
    assert torch.bincount(groups["logits_in"], minlength=2).tolist() == [48, 16]  # 64 features, 3:1


def test_deal_features_respects_quota_and_preference():
    score = torch.tensor([[5.0, 4.0, 0.1, 3.0], [1.0, 1.0, 1.0, 2.9]])
    assert grouping.deal_features(score, torch.tensor([1, 1])).tolist() == [0, 0, 1, 1]
    assert grouping.deal_features(score, torch.tensor([3, 1])).tolist() == [0, 0, 1, 0]
    assert grouping.deal_features(score, torch.tensor([0, 4])).tolist() == [1, 1, 1, 1]


def test_alexnet_run(tmp_path, tiny):
    metrics = run(config(tmp_path, model="alexnet", split="2-2-4"), tiny)
    assert metrics["params_split"] < metrics["params_dense"] and len(metrics["groups"]) == 4
    assert len(plot(tmp_path)) == 2
