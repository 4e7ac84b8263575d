"""The three ways to run a split model's subtrees in parallel, each checked against the model itself.

    python examples/parallel_subtrees.py                           # DeviceParallel (+ StreamParallel with CUDA)
    torchrun --nproc-per-node 2 examples/parallel_subtrees.py      # DistributedSplit over 2 processes

Runs on CPU (gloo, CPU "devices") as well as on GPUs (NCCL when every local rank has its own
GPU, else gloo on CPU). Pass
``--ckpt split.pt`` (from ``splitkern train``) to use a trained model instead of a fresh
WRN-16-2 with a random 2-2-2 split.
"""

from __future__ import annotations

import argparse
import os

import torch

import splitkern
from splitkern.models import wrn
from splitkern.parallel import DeviceParallel, DistributedSplit, StreamParallel
from splitkern.splitnet import split


def split_model(ckpt: str | None):
    if ckpt:
        return splitkern.load(ckpt).eval()
    torch.manual_seed(0)  # the same weights and groups in every process
    return split(wrn(16, 2, 100, split="2-2-2")).eval()


def report(name: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    error = (got.float().cpu() - expected.float().cpu()).abs().max().item()
    print(f"{name}: logits {tuple(got.shape)}, max |difference| to the split model {error:.2e}", flush=True)


def single_process(model, x: torch.Tensor) -> None:
    expected = model(x)
    gpus = torch.cuda.device_count()
    devices = [f"cuda:{i}" for i in range(gpus)] if gpus >= 2 else ["cpu", "cpu"]
    report(f"DeviceParallel on {devices}", DeviceParallel(model, devices, example=x)(x), expected)
    if gpus:
        model, x = model.cuda(), x.cuda()
        streams = StreamParallel(model, capture=True, example=x)
        report("StreamParallel (CUDA graph)", streams(x), model(x))  # against the same GPU's kernels


def distributed(model, x: torch.Tensor) -> None:
    import torch.distributed as dist

    cuda = torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # NCCL: one GPU per rank
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda") if cuda else torch.device("cpu")
    model, x = model.to(device), x.to(device)
    expected = model(x)
    logits = DistributedSplit(model, example=x)(x)  # every rank gets all the logits
    if dist.get_rank() == 0:
        report(f"DistributedSplit over {dist.get_world_size()} ranks", logits, expected)
    dist.barrier()  # no rank tears the group down while a peer still uses it
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", help="split.pt written by 'splitkern train'")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    x = torch.randn(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            distributed(split_model(args.ckpt), x)
        else:
            single_process(split_model(args.ckpt), x)


if __name__ == "__main__":
    main()
