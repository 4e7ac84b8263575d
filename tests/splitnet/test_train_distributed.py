"""Data-parallel training (DDP over gloo, 2 spawned CPU ranks): the same step as one process with the
global batch, identical ranks, resume after a kill, and the CLI under torchrun."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from splitkern import data
from splitkern.splitnet.train import Phase, Trainer, TrainConfig, run

GLOBAL_BATCH = 32


def tiny():
    return data.synthetic_hierarchy(seed=0, train_per_class=2, test_per_class=1)  # 32 training images


def config(out, world, **kw):
    base = dict(model="alexnet", split="2-2", batch_size=GLOBAL_BATCH // world, stage1_epochs=2, warmup_epochs=1,
                stage2_epochs=1, lr=0.05, out=str(out), progress=False)
    return TrainConfig(**(base | kw))


def _in_group(rank, world, init_file, fn, *args):
    """``fn(rank, world, *args)`` inside a gloo group (file rendezvous), the group destroyed after."""
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _spawn(world, tmp_path, fn, *args):
    init_file = tmp_path / f"rendezvous-{fn.__name__}-{world}-{len(list(tmp_path.iterdir()))}"
    if world == 1:
        _in_group(0, 1, init_file, fn, *args)
    else:
        mp.spawn(_in_group, args=(world, str(init_file), fn, *args), nprocs=world)


def _one_step(rank, world, out, result):
    trainer = Trainer(config(out, world), tiny())
    assert trainer.steps_per_epoch == 1  # GLOBAL_BATCH images: one step of GLOBAL_BATCH / world per rank
    model = trainer.build()  # split-aware: the step includes the regularisers and the assignment logits
    trainer.fit(model, Phase("splitnet", "stage1", 0, 1, regularize=True, learn_assignments=True))
    torch.save(model.state_dict(), f"{result}.{rank}")


def test_one_step_on_two_ranks_equals_one_process_with_the_global_batch(tmp_path):
    _spawn(1, tmp_path, _one_step, tmp_path / "one", str(tmp_path / "one.pt"))
    _spawn(2, tmp_path, _one_step, tmp_path / "two", str(tmp_path / "two.pt"))
    one = torch.load(tmp_path / "one.pt.0")
    initial = Trainer(config(tmp_path / "init", 1), tiny()).build().state_dict()
    for rank in (0, 1):
        two = torch.load(tmp_path / f"two.pt.{rank}")
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0, msg=key)
    moved = [k for k in one if not torch.equal(one[k], initial[k])]
    assert "fc6.weight" in moved and "assignments.classes.logits" in moved  # the step did something


def _whole_run(rank, world, out, result, kill_after_epochs):
    calls = {"n": 0}
    original = Trainer._train_epoch

    def counted(self, *args):
        calls["n"] += 1
        if kill_after_epochs is not None and calls["n"] > kill_after_epochs:
            raise RuntimeError("killed for the test")  # (mp.spawn swallows a KeyboardInterrupt)
        return original(self, *args)
    Trainer._train_epoch = counted
    cfg = config(out, world, model="wrn10-1", split="2", baselines=("dense",), resume=kill_after_epochs is None)
    trainer = Trainer(cfg, tiny())
    main = trainer.run_splitnet(trainer.starting_model())
    torch.save({"state": main["split_model"].state_dict(), "epochs_trained": calls["n"]}, f"{result}.{rank}")


def test_ranks_stay_identical_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    _spawn(2, tmp_path, _whole_run, tmp_path / "a", str(tmp_path / "a.pt"), None)
    a0, a1 = (torch.load(tmp_path / f"a.pt.{rank}")["state"] for rank in (0, 1))
    for key in a0:  # weights and BN statistics
        assert torch.equal(a0[key], a1[key]), key
    with pytest.raises(Exception, match="killed for the test"):
        _spawn(2, tmp_path, _whole_run, tmp_path / "b", str(tmp_path / "b.pt"), 1)  # after the first checkpoint
    assert (tmp_path / "b" / "warmup" / "train.ckpt").exists() and not (tmp_path / "b" / "split.pt").exists()
    _spawn(2, tmp_path, _whole_run, tmp_path / "b", str(tmp_path / "b.pt"), None)
    resumed = torch.load(tmp_path / "b.pt.0")
    assert resumed["epochs_trained"] == 2  # warm-up from its checkpoint; stage 1 and stage 2 trained
    b0 = resumed["state"]
    for key in a0:
        torch.testing.assert_close(b0[key], a0[key], atol=1e-6, rtol=0, msg=key)


def _metrics_run(rank, world, out, result):
    metrics = run(config(out, world, model="wrn10-1", split="2"), tiny())
    torch.save(metrics["test_acc"], f"{result}.{rank}")


def test_only_rank_zero_writes_and_the_sharded_evaluation_counts_every_image(tmp_path):
    _spawn(2, tmp_path, _metrics_run, tmp_path / "r", str(tmp_path / "acc"))
    accuracies = {torch.load(tmp_path / f"acc.{rank}") for rank in (0, 1)}
    assert len(accuracies) == 1  # the reduced count, the same on both ranks
    acc = accuracies.pop()
    assert acc * 16 == pytest.approx(round(acc * 16))  # 16 test images: a multiple of 1/16
    rows = (tmp_path / "r" / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # one row per epoch (warm-up, stage 1, stage 2), not one per rank


def test_cli_train_under_torchrun(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "splitkern.cli", "train", "--model", "wrn10-1", "--split", "2", "--epochs", "2",
                          "--batch-size", "128", "--out", str(tmp_path / "run"), "--no-progress"],
                         capture_output=True, text=True, timeout=600, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("SplitNet wrn10-1 split 2") == 1  # one summary, from rank 0
    assert (tmp_path / "run" / "split.pt").exists() and (tmp_path / "run" / "metrics.json").exists()
