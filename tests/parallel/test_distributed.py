"""Subtrees and DistributedSplit over gloo with 2 and 3 CPU processes on loopback."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from splitkern.models import alexnet, wrn
from splitkern.parallel import DistributedSplit, balanced_placement, subtrees
from splitkern.splitnet import split

MODELS = {
    "wrn-2-4-8": lambda: wrn(10, 1, 10, split="2-4-8"),
    "wrn-4": lambda: wrn(10, 1, 10, split="4"),
    "alexnet-2-2-4": lambda: alexnet(10, split="2-2-4", variant="cifar", hidden=32),
}


def make_split_model(name: str):
    torch.manual_seed(0)  # identical on every rank
    model = MODELS[name]()
    for assignment in model.assignments.values():
        torch.nn.init.normal_(assignment.logits, std=3.0)  # unequal groups and subtrees
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return split(model).eval()


def example_batch():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODELS)
def test_subtrees_rebuild_the_logits(name):
    model = make_split_model(name)
    x = example_batch()
    expected = model(x)
    out = torch.zeros_like(expected)
    parts = subtrees(model, x)
    for part in parts:
        out[:, part.classes] = part.module.eval()(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert sorted(torch.cat([p.classes for p in parts]).tolist()) == list(range(10))
    assert all(p.flops_per_sample > 0 for p in parts)


def test_balanced_placement():
    assert balanced_placement([5, 1, 4, 2], 2) == [0, 0, 1, 1]  # loads 5+1 and 4+2
    assert balanced_placement([1, 1], 3) == [0, 1]
    with pytest.raises(ValueError, match="workers"):
        balanced_placement([1], 0)


def _worker(rank, world, name, store, results, placement):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = DistributedSplit(make_split_model(name), placement=placement, example=example_batch())
        with torch.no_grad():
            torch.save(model(example_batch()), os.path.join(results, f"{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while a peer still uses it (that aborts the peer)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_gloo_processes_match_single_process(tmp_path, name, world):
    expected = make_split_model(name)(example_batch())
    mp.spawn(_worker, args=(world, name, str(tmp_path / "store"), str(tmp_path), None), nprocs=world, join=True)
    for rank in range(world):
        torch.testing.assert_close(torch.load(tmp_path / f"{rank}.pt"), expected, rtol=0, atol=1e-6)


def test_bad_placements(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = make_split_model("wrn-2-4-8")
        with pytest.raises(ValueError, match="placement names 3 subtrees"):
            DistributedSplit(model, placement=[0, 0, 0])
        with pytest.raises(ValueError, match="worker ids"):
            DistributedSplit(model, placement=[0, 1])
    finally:
        dist.destroy_process_group()


def test_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSplit(make_split_model("wrn-4"))


def test_cost_model_and_cli(tmp_path):
    import subprocess
    import sys

    import splitkern
    from splitkern.parallel.cost import cost_model

    model = make_split_model("wrn-2-4-8")
    report = cost_model(model, example_batch(), workers=(1, 2, 3))
    assert report["plans"][0]["predicted_speedup"] == pytest.approx(1.0)
    assert 1.0 < report["plans"][1]["predicted_speedup"] <= 2.0
    assert report["total_flops"] == report["trunk_flops"] + sum(report["subtree_flops"])
    path = splitkern.save(model, tmp_path / "split.pt")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "splitkern.cli", "plan", "--ckpt", str(path), "--workers", "1,2"],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert out.returncode == 0 and "2 workers: predicted speedup" in out.stdout, out.stderr


def test_infer_under_torchrun_matches_one_process(tmp_path):
    import subprocess
    import sys

    import splitkern

    path = splitkern.save(make_split_model("wrn-2-4-8"), tmp_path / "split.pt")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    single = subprocess.run([sys.executable, "-m", "splitkern.cli", "infer", "--ckpt", str(path)],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "splitkern.cli", "infer", "--ckpt", str(path)],
                           capture_output=True, text=True, timeout=300, env=env, check=False)
    assert single.returncode == 0 and multi.returncode == 0, single.stderr[-2000:] + multi.stderr[-2000:]
    accuracy = single.stdout.split("test accuracy ")[1].split("%")[0]
    assert f"test accuracy {accuracy}% (DistributedSplit over 2 ranks)" in multi.stdout
