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
    for result in [saved] + [saved["baselines"][name] for name in ("random", "cluster")]:
        assert 0 <= result["test_acc_before_split"] <= 1 and 0 <= result["test_acc_at_split"] <= 1
    assert 0 <= metrics["nmi_coarse"] <= 1
    model = splitkern.load(tmp_path / "split.pt").eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("run,phase,epoch,lr") and len(log) > 4
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


def test_a_run_resumed_with_another_baseline_keeps_the_earlier_arms(tmp_path, tiny):
    first = run(config(tmp_path, baselines=("random",)), tiny)
    second = run(config(tmp_path, baselines=("dense",), resume=True), tiny)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["baselines"]) == {"random", "dense"} == set(second["baselines"])
    assert saved["baselines"]["random"] == first["baselines"]["random"]


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
    dense_epochs = [int(r[2]) for r in rows if r[0] == "dense"]
    assert dense_epochs == [1, 2]  # the epochs after the shared warm-up, the same ones SplitNet trains


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
    # the CIFAR-100 cut-point sweep's best: 3 warm-up, 2 learning the groups, 3 annealed, 7 after the split
    assert (cfg.stage1_epochs, cfg.stage2_epochs, cfg.warmup_epochs, cfg.anneal_epochs) == (8, 7, 3, 3)
    assert cfg.baselines == ("dense", "cluster")
    assert (cfg.precision, cfg.assign_confidence) == ("fp32", 1.0)
    args = ["train", "--out", "x", "--precision", "bf16", "--assign-confidence", "4", "--gammas", "1,0.1,10"]
    cfg = _train_config(_parser().parse_args(args))
    assert (cfg.precision, cfg.assign_confidence, cfg.gammas) == ("bf16", 4.0, (1.0, 0.1, 10.0))
    assert _train_config(_parser().parse_args(["train", "--out", "x"])).gammas == (1.0, 1.0, 10.0)


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
    # DESIGN.md (where the design started): 4 superclass-pure groups of 100 classes vs 20 superclasses score 0.63
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
    assert {p.name for p in plot(tmp_path)} == {"assignments.png", "block_diagonal.png", "learning_curves.png",
                                                "accuracy_vs_params.png", "off_block.png"}


# --- the fair protocol (one schedule, same regularisation, split bookkeeping, baselines, init_from) ----------

def log_rows(folder):
    import csv
    with (folder / "log.csv").open() as f:
        return list(csv.DictReader(f))


def arm_lrs(rows, arm):
    """The lr of every epoch ``arm`` went through, the shared warm-up (and the dense arm's stage 1) included."""
    shared = ({"warmup"} if arm != "thin" else set()) | ({"dense"} if arm in ("random", "cluster") else set())
    picked = [r for r in rows if r["run"] == arm or (r["run"] in shared and (r["run"] != "dense" or
                                                                             r["phase"] == "stage1"))]
    return [(int(r["epoch"]), float(r["lr"])) for r in picked]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_lr_factor_never_rises_and_ends_low(schedule):
    from splitkern.splitnet.train import lr_factor
    values = [lr_factor(schedule, step, 400) for step in range(401)]
    assert values[0] == 1.0 and all(b <= a for a, b in zip(values, values[1:]))
    assert values[-1] < 0.02


def test_every_arm_follows_one_schedule_across_phases_split_and_resume(tmp_path, tiny, monkeypatch):
    """lr per epoch: one curve over all epochs for every arm (no restart at a phase or the split), the
    same curve for every arm at the same epoch, and the same after a kill and --resume."""
    arms = ("dense", "random", "cluster", "thin")
    cfg = dict(stage1_epochs=3, warmup_epochs=1, stage2_epochs=2, baselines=arms)
    run(config(tmp_path / "a", **cfg), tiny)
    rows = log_rows(tmp_path / "a")
    total = 5
    by_epoch = {}
    for arm in ("splitnet",) + arms:
        lrs = arm_lrs(rows, arm)
        assert [e for e, _ in lrs] == list(range(total)), arm  # every epoch once, in order
        assert all(b < a for (_, a), (_, b) in zip(lrs, lrs[1:])), (arm, lrs)
        for epoch, lr in lrs:
            assert by_epoch.setdefault(epoch, lr) == pytest.approx(lr), (arm, epoch)
    assert by_epoch[0] < 0.1 and by_epoch[total - 1] < 0.01  # the rate at each epoch's last step

    calls = {"n": 0}
    original = Trainer._train_epoch

    def dies_on_fifth_epoch(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:  # inside the split model's stage 2
            raise KeyboardInterrupt
        return original(self, *args)
    monkeypatch.setattr(Trainer, "_train_epoch", dies_on_fifth_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "b", **cfg), tiny)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    run(config(tmp_path / "b", resume=True, **cfg), tiny)
    resumed = log_rows(tmp_path / "b")
    key = ("run", "phase", "epoch", "lr", "train_loss")
    assert [tuple(r[k] for k in key) for r in resumed] == [tuple(r[k] for k in key) for r in rows]


def test_no_dropout_anywhere_by_default_and_the_same_dropout_everywhere_when_asked(tmp_path, tiny, monkeypatch):
    seen = []
    original = Trainer.fit

    def record(self, model, phase):
        seen.append((phase.run, [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]))
        return original(self, model, phase)
    monkeypatch.setattr(Trainer, "fit", record)
    run(config(tmp_path / "none", baselines=("dense", "random", "thin")), tiny)
    assert {arm for arm, _ in seen} == {"warmup", "splitnet", "dense", "random", "thin"}
    assert all(not ps for _, ps in seen), seen
    seen.clear()
    run(config(tmp_path / "some", dropout=0.2, baselines=("dense", "random")), tiny)
    assert all(ps and set(ps) == {0.2} for _, ps in seen), seen
    assert len({len(ps) for _, ps in seen}) == 1  # the same places in every arm


def test_weight_decay_only_on_conv_and_linear_weights(tmp_path, tiny):
    from splitkern.splitnet.train import Phase
    trainer = Trainer(config(tmp_path), tiny)
    for model in (trainer.build(), convert_split(trainer.build())):
        optimizer = trainer._optimizer(model, Phase("x", "stage1", 0, 1, learn_assignments=True))
        decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        names = {id(p): n for n, p in model.named_parameters()}
        assert decayed and all(names[i].endswith("weight") and "bn" not in names[i] for i in decayed)
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 2)[-2] if "." in name else ""
            is_layer_weight = name.endswith(".weight") and not owner.startswith("bn")
            assert (id(p) in decayed) == (is_layer_weight and p.requires_grad), name
        assert all(id(p) not in decayed for p in getattr(model, "assignments", torch.nn.Module()).parameters())


def convert_split(model):
    from splitkern.splitnet import convert
    return convert.split(model)


def test_recalibrate_batchnorm_changes_running_stats_not_weights():
    from splitkern.splitnet import convert
    torch.manual_seed(0)
    model = wrn(10, 1, 16, dropout=0.3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [3 + 2 * torch.randn(8, 3, 32, 32) for _ in range(3)]
    convert.recalibrate_batchnorm(model, images)
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    params = {n for n, _ in model.named_parameters()}
    assert all(torch.equal(before[k], after[k]) for k in params)
    assert model.training and all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.5)).eval()
    convert.recalibrate_batchnorm(first, images)
    expected = torch.stack([x.mean((0, 2, 3)) for x in images]).mean(0)  # the plain average over the batches
    torch.testing.assert_close(first[0].running_mean, expected)
    assert not first.training and first[0].momentum == 0.1


def test_thin_width_search_hits_the_parameter_budget():
    from splitkern.models import thin
    from splitkern.splitnet import convert
    for name, budget in (("wrn16-2", 369_720), ("wrn16-2", 450_000), ("wrn16-8", 5_730_000), ("alexnet", 3_000_000)):
        model = thin(name, 100, budget)
        assert abs(convert.count_parameters(model) - budget) <= 0.03 * budget, (name, budget)
        assert not hasattr(model, "assignments")
    with pytest.raises(ValueError, match="params"):
        thin("alexnet", 100, 1000)


def test_thin_baseline_matches_the_split_parameters(tmp_path):
    wide = data.synthetic_hierarchy(seed=0, train_per_class=2, test_per_class=1)
    metrics = run(config(tmp_path, model="wrn10-4", split="4-4", baselines=("thin",)), wide)
    thin_params = metrics["baselines"]["thin"]["params"]
    assert abs(thin_params - metrics["params_split"]) <= 0.03 * metrics["params_split"]
    assert thin_params < metrics["params_dense"]


def test_dense_baseline_writes_a_model_that_init_from_starts_from_exactly(tmp_path, tiny, monkeypatch):
    run(config(tmp_path / "first", baselines=("dense",)), tiny)
    ckpt = tmp_path / "first" / "dense" / "dense.pt"
    saved = splitkern.load(ckpt)
    started = []
    original = Trainer.fit

    def record(self, model, phase):
        started.append((phase.run, phase.name, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return original(self, model, phase)
    monkeypatch.setattr(Trainer, "fit", record)
    cfg = config(tmp_path / "second", init_from=str(ckpt), warmup_epochs=0, baselines=("dense", "random"))
    metrics = run(cfg, tiny)
    run_name, phase, state = started[0]
    assert (run_name, phase) == ("splitnet", "stage1")
    for key, value in saved.state_dict().items():
        assert torch.equal(state[key], value), key
    dense_start = next(s for r, p, s in started if r == "dense")
    assert all(torch.equal(dense_start[k], v) for k, v in saved.state_dict().items())
    assert not any(r == "warmup" for r, _, _ in started)
    assert metrics["config"]["init_from"] == str(ckpt) and "random" in metrics["baselines"]


def test_bad_init_from_is_a_clear_error(tmp_path, tiny):
    with pytest.raises(ValueError, match="init_from.*not a file"):
        Trainer(config(tmp_path, init_from=str(tmp_path / "missing.pt"), warmup_epochs=0), tiny)
    other = tmp_path / "wrn10-2.pt"
    splitkern.save(wrn(10, 2, tiny.num_classes), other)
    with pytest.raises(ValueError, match="init_from.*not model='wrn10-1'"):
        Trainer(config(tmp_path, init_from=str(other), warmup_epochs=0), tiny)
    classes = tmp_path / "ten.pt"
    splitkern.save(wrn(10, 1, 10), classes)
    with pytest.raises(ValueError, match="init_from.*10 classes"):
        Trainer(config(tmp_path, init_from=str(classes), warmup_epochs=0), tiny)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.ones(2)}, junk)
    with pytest.raises(ValueError, match="init_from.*not a splitkern model"):
        Trainer(config(tmp_path, init_from=str(junk), warmup_epochs=0), tiny)
    with pytest.raises(ValueError, match="warmup_epochs"):
        Trainer(config(tmp_path, init_from=str(other), warmup_epochs=1), tiny)


def test_cli_fair_protocol_flags():
    args = ["train", "--out", "x", "--dropout", "0.3", "--schedule", "step", "--init-from", "d.pt",
            "--baselines", "dense,thin", "--weight-decay", "1e-4"]
    cfg = _train_config(_parser().parse_args(args))
    assert (cfg.dropout, cfg.schedule, cfg.init_from, cfg.warmup_epochs, cfg.weight_decay) == \
        (0.3, "step", "d.pt", 0, 1e-4)
    assert cfg.baselines == ("dense", "thin")
    cfg = _train_config(_parser().parse_args(["train", "--out", "x"]))
    assert (cfg.dropout, cfg.schedule, cfg.init_from, cfg.assign_lr) == (0.0, "cosine", None, 1.0)
