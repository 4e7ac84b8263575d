"""Subtrees and DistributedSplit over gloo with 2 and 3 CPU processes on loopback."""

import faulthandler
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from splitkern.models import alexnet, wrn
from splitkern.nn import SplitConv2d, SplitLinear
from splitkern.parallel import DistributedSplit, SubtreeSet, balanced_placement, logit_exchange, subtrees
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


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_subtree_set_holds_every_weight_once(name):
    model = make_split_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = example_batch()
    subtree_set = SubtreeSet(model, x)
    assert _count(subtree_set) == _count(model)  # trunk copy + subtrees partition the weights
    assert not any(isinstance(m, (SplitConv2d, SplitLinear)) for m in subtree_set.trunk_model.modules())
    out = torch.zeros(x.shape[0], subtree_set.num_classes)
    features = subtree_set.trunk(x)
    for i, classes in enumerate(subtree_set.classes):
        out[:, classes] = subtree_set.branch(i, features)
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is not modified
    with pytest.raises(RuntimeError, match="not held by this copy"):
        subtree_set.parts[0](x)  # a subtree no longer runs the trunk itself
    subtree_set.keep_only([1])
    assert _count(subtree_set.parts[0]) == 0
    with pytest.raises(RuntimeError, match="subtree 0.*not held"):
        subtree_set.branch(0, features)
    torch.testing.assert_close(subtree_set.branch(1, features), out[:, subtree_set.classes[1]], rtol=0, atol=0)


def test_balanced_placement():
    assert balanced_placement([5, 1, 4, 2], 2) == [0, 0, 1, 1]  # loads 5+1 and 4+2
    assert balanced_placement([1, 1], 3) == [0, 1]
    with pytest.raises(ValueError, match="workers"):
        balanced_placement([1], 0)


def _worker(rank, world, name, store, results, placement):
    faulthandler.enable()  # a crash in a rank prints its Python stack into the test report
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = DistributedSplit(make_split_model(name), placement=placement, example=example_batch())
        held = [i for i, part in enumerate(model.set.parts) if _count(part)]
        with torch.no_grad():
            torch.save((model(example_batch()), held, model.placement, model.exchange),
                       os.path.join(results, f"{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while a peer still uses it (that aborts the peer)
    finally:
        dist.destroy_process_group()


def _check_ranks_match_single_process(tmp_path, name, world, placement=None) -> set[str]:
    """Spawns the ranks, checks every rank's logits and held subtrees; returns the exchanges used."""
    expected = make_split_model(name)(example_batch())
    mp.spawn(_worker, args=(world, name, str(tmp_path / "store"), str(tmp_path), placement), nprocs=world,
             join=True)
    exchanges = set()
    for rank in range(world):
        logits, held, used, exchange = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
        assert held == [i for i, r in enumerate(used) if r == rank]  # only its own subtrees' weights
        assert placement is None or used == placement
        exchanges.add(exchange)
    return exchanges


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_gloo_processes_match_single_process(tmp_path, name, world):
    _check_ranks_match_single_process(tmp_path, name, world)


@pytest.mark.parametrize("world, placement, exchange", [
    (2, [0, 1], "all_gather"),  # blocks of 4 (padded to 6) and 6 classes
    (3, [2, 0], "all_gather"),  # rank 2's block padded to 6 columns, rank 1 idle and sends zeros
    (2, [1, 1], "all_reduce"),  # rank 1 holds all 10 classes: gathering 10 columns saves nothing
])
def test_gloo_uneven_placements(tmp_path, world, placement, exchange):
    assert [len(c) for c in SubtreeSet(make_split_model("wrn-2-4-8"), example_batch()).classes] == [4, 6]
    assert _check_ranks_match_single_process(tmp_path, "wrn-2-4-8", world, placement) == {exchange}


def test_logit_exchange_picks_the_smaller_collective():
    assert logit_exchange([4, 6], [0, 1], 2) == ("all_gather", 6)  # vs all-reduce 2 * 1/2 * 10 = 10
    assert logit_exchange([4, 6], [1, 1], 2) == ("all_reduce", 10)  # a tie: the plain all-reduce
    assert logit_exchange([49, 51], [0, 1], 4) == ("all_reduce", 150)  # gather 3 * 51 = 153: idle ranks
    assert logit_exchange([25] * 4, [0, 1, 2, 3], 4) == ("all_gather", 75)  # vs 150


def test_destroy_process_group_frees_the_group(tmp_path):
    """A split model run inside a process group must not keep the group alive after destroy_process_group.

    torch's custom ops import torch._dynamo, and with it torch.distributed.nn.functional, on their
    first call; that module binds ``group=group.WORLD`` as a default argument, so imported while a
    group exists it holds the group forever: its gloo threads outlive destroy_process_group and can
    abort the process at exit ("terminate called without an active exception"; CI saw it once).
    ``import splitkern`` imports it first. A fresh interpreter, so the import order is real.
    """
    import subprocess
    import sys

    script = "\n".join([
        "import weakref, torch, torch.distributed as dist",
        "import splitkern",
        "from splitkern.models import wrn",
        "from splitkern.splitnet import split",
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)",
        "group = weakref.ref(dist.group.WORLD)",
        "split(wrn(10, 1, 10, split='4')).eval()(torch.randn(2, 3, 32, 32))",
        "dist.destroy_process_group()",
        "print('group freed:', group() is None)",
    ])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=_subprocess_env(), check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "group freed: True" in out.stdout, out.stdout


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


def _subprocess_env(**extra) -> dict:
    """This environment for a CLI subprocess, without the Triton interpreter (CPU runs use the reference)."""
    return {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **extra}


def test_cost_model_and_cli(tmp_path):
    import subprocess
    import sys

    import splitkern
    from splitkern.parallel.cost import cost_model

    model = make_split_model("wrn-2-4-8")
    x = example_batch()
    report = cost_model(model, x, workers=(1, 2, 3), batch=5)
    assert report["plans"][0]["predicted_speedup"] == pytest.approx(1.0)
    assert 1.0 < report["plans"][1]["predicted_speedup"] <= 2.0
    assert report["total_flops"] == report["trunk_flops"] + sum(report["subtree_flops"])
    # bytes, from the model itself: the cut is the output of conv1 + stage 0 (the split starts at stage 1);
    # the weights are held once, so trunk + subtrees = the split model's parameters (4 bytes each) + the buffers
    cut = model.stages[0](model.conv1(x[:1]))
    assert report["cut_bytes_per_sample"] == cut.numel() * 4
    buffers = sum(b.numel() * b.element_size() for b in SubtreeSet(model).buffers())  # int64 indices among them
    assert report["trunk_bytes"] + sum(report["subtree_bytes"]) == 4 * _count(model) + buffers
    one, two = report["plans"][0], report["plans"][1]
    assert one["exchange_bytes_per_batch"] == one["device_copy_bytes_per_batch"] == 0
    # subtrees of 4 and 6 classes on two workers: each receives the other's block, padded to 6 columns
    # (a ring all-reduce of the 10 logits would receive 2 (n-1)/n * 10 = 10)
    assert report["subtree_classes"] == [4, 6] and sorted(two["placement"]) == [0, 1]
    assert two["logit_exchange"] == "all_gather" and two["exchange_bytes_per_batch"] == 5 * 6 * 4
    remote = [i for i, w in enumerate(two["placement"]) if w == 1]
    assert two["device_copy_bytes_per_batch"] == 5 * (cut.numel() * 4 + 4 * sum(report["subtree_classes"][i]
                                                                                 for i in remote))
    with pytest.raises(ValueError, match="batch"):
        cost_model(model, x, batch=0)
    path = splitkern.save(model, tmp_path / "split.pt")
    env = _subprocess_env()
    out = subprocess.run([sys.executable, "-m", "splitkern.cli", "plan", "--ckpt", str(path), "--workers", "1,2",
                          "--batch-size", "64"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert out.returncode == 0 and "2 workers: predicted speedup" in out.stdout, out.stderr
    assert "communication per batch of 64" in out.stdout and "features at the cut" in out.stdout


def test_infer_under_torchrun_matches_one_process(tmp_path):
    import subprocess
    import sys

    import splitkern

    model = wrn(10, 1, 16, split="2-4-8")  # as many classes as the built-in data (infer checks)
    for assignment in model.assignments.values():
        torch.nn.init.normal_(assignment.logits, std=3.0)
    path = splitkern.save(split(model).eval(), tmp_path / "split.pt")
    env = _subprocess_env(OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "splitkern.cli", "infer", "--ckpt", str(path)],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "splitkern.cli", "infer", "--ckpt", str(path)],
                           capture_output=True, text=True, timeout=300, env=env, check=False)
    assert single.returncode == 0 and multi.returncode == 0, single.stderr[-2000:] + multi.stderr[-2000:]
    accuracy = single.stdout.split("test accuracy ")[1].split("%")[0]
    assert f"test accuracy {accuracy}% (DistributedSplit over 2 ranks)" in multi.stdout


@pytest.mark.parametrize("spec, env, expected", [
    ("cuda", {"WORLD_SIZE": "4", "LOCAL_RANK": "3"}, "cuda:3"),  # NCCL: one GPU per rank
    ("cuda", {}, "cuda"),
    ("cuda:1", {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "cuda:1"),  # an explicit index is kept
    ("cpu", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cpu"),
])
def test_infer_device_per_rank(spec, env, expected):
    from splitkern.backend import rank_device

    assert rank_device(spec, env) == torch.device(expected)


@pytest.mark.parametrize("ranks", [1, 2])
def test_parallel_example_matches_the_split_model(ranks):
    """examples/parallel_subtrees.py, as the README runs it: plain (DeviceParallel) and under torchrun."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "parallel_subtrees.py"
    env = _subprocess_env(OMP_NUM_THREADS="1")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    out = subprocess.run([sys.executable, *launcher, str(example), "--batch-size", "3"], capture_output=True,
                         text=True, timeout=300, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    errors = [float(e) for e in re.findall(r"max \|difference\| to the split model (\S+)", out.stdout)]
    assert errors and max(errors) <= 1e-5, out.stdout
    assert ("DistributedSplit over 2 ranks" if ranks > 1 else "DeviceParallel") in out.stdout
