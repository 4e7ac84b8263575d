"""The ``splitkern`` console entry point."""

from __future__ import annotations

import argparse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="list usable backends and built kernels")
    sub.add_parser("kernels", help="static kernel report (registers, spills, smem, tensor cores) for sm_80/sm_90",
                   add_help=False)
    demo = sub.add_parser("demo", help="SplitLinear vs nn.Linear on built-in data")
    demo.add_argument("--features", type=int, default=2048)
    demo.add_argument("--batch", type=int, default=256)
    demo.add_argument("--groups", type=int, default=4)
    demo.add_argument("--repeats", type=int, default=10)
    demo.add_argument("--device", default="cpu")

    train = sub.add_parser("train", help="SplitNet: stage 1, split, stage 2 (+ baselines)")
    train.add_argument("--data", default="synthetic", help="'synthetic', an npz shard folder or cifar-100-python")
    train.add_argument("--model", default="wrn10-2", help="wrn{depth}-{widen} (e.g. wrn16-8) or alexnet")
    train.add_argument("--split", default="4", help="groups per split level, lowest first: 4, 4-4, 2-2-2, 2-4-8")
    train.add_argument("--epochs", type=int, default=None,
                       help="total epochs of the one schedule (2/3 stage 1 incl. 1/3 of it warm-up, 1/3 stage 2)")
    train.add_argument("--stage1-epochs", type=int, default=None, help="warm-up + stage-1 epochs")
    train.add_argument("--stage2-epochs", type=int, default=None)
    train.add_argument("--warmup-epochs", type=int, default=None,
                       help="dense epochs before assignments learn (0 with --init-from)")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one schedule")
    train.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                       help="per-step curve over all epochs, every arm on it: cosine to 0, or x0.1 at 50%% and 75%%")
    train.add_argument("--dropout", type=float, default=0.0,
                       help="dropout in every residual block (AlexNet: before fc6, fc7), in every arm alike")
    train.add_argument("--weight-decay", type=float, default=5e-4, help="on conv/linear weights only")
    train.add_argument("--assign-lr", type=float, default=1.0,
                       help="peak learning rate of the assignment logits (on the same curve)")
    train.add_argument("--init-from", default=None,
                       help="split a model you already trained: a dense model saved by splitkern.save "
                            "(e.g. a dense run's dense/dense.pt); skips the warm-up")
    train.add_argument("--assign-init", choices=("cluster", "random"), default="cluster")
    train.add_argument("--gammas", default="1,1,10", help="weights of R_D, R_W, R_E in stage 1 (gamma1,gamma2,gamma3)")
    train.add_argument("--assign-confidence", type=float, default=1.0,
                       help="logit given to the clustered group at init (higher = harder to move)")
    train.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="autocast dtype of the forward pass (regularisers stay fp32)")
    train.add_argument("--baselines", default="", help="comma-separated: dense,random,cluster,thin")
    train.add_argument("--device", default="cpu")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True)
    train.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    train.add_argument("--no-tensorboard", action="store_true")

    plot = sub.add_parser("plot", help="assignment heat maps and block-diagonal weights of a train folder")
    plot.add_argument("dir")

    plan = sub.add_parser("plan", help="cost model of a split model: FLOPs per subtree, speedup on N workers")
    plan.add_argument("--ckpt", required=True, help="split.pt written by 'splitkern train'")
    plan.add_argument("--workers", default="1,2,4,8")
    plan.add_argument("--image-size", type=int, default=32)
    plan.add_argument("--batch-size", type=int, default=256, help="batch for the communication volumes")

    infer = sub.add_parser("infer", help="test accuracy of a split model; under torchrun its subtrees run on "
                                         "different ranks (DistributedSplit)")
    infer.add_argument("--ckpt", required=True)
    infer.add_argument("--data", default="synthetic")
    infer.add_argument("--batch-size", type=int, default=256)
    infer.add_argument("--device", default="cpu", help="'cuda' under torchrun: each rank takes cuda:LOCAL_RANK")
    return parser


def _train_config(args):
    from splitkern.splitnet.train import TrainConfig

    epochs = args.epochs or 9
    stage2 = args.stage2_epochs if args.stage2_epochs is not None else max(1, epochs // 3)
    stage1 = args.stage1_epochs if args.stage1_epochs is not None else max(2, epochs - stage2)
    default_warmup = 0 if args.init_from else stage1 // 3
    warmup = args.warmup_epochs if args.warmup_epochs is not None else default_warmup
    baselines = tuple(b for b in args.baselines.split(",") if b)
    try:
        gammas = tuple(float(g) for g in args.gammas.split(","))
    except ValueError:
        raise ValueError(f"--gammas must be three comma-separated numbers, got {args.gammas!r}") from None
    return TrainConfig(data=args.data, model=args.model, split=args.split, stage1_epochs=stage1,
                       stage2_epochs=stage2, warmup_epochs=warmup, batch_size=args.batch_size, lr=args.lr,
                       schedule=args.schedule, dropout=args.dropout, weight_decay=args.weight_decay,
                       init_from=args.init_from, assign_lr=args.assign_lr, assign_init=args.assign_init, gammas=gammas,
                       assign_confidence=args.assign_confidence, precision=args.precision, baselines=baselines,
                       device=args.device, seed=args.seed, out=args.out, resume=args.resume,
                       tensorboard=not args.no_tensorboard)


def _summary(metrics: dict, out: str) -> str:
    lines = [f"SplitNet {metrics['model']} split {metrics['spec']} on {metrics['data']}:"]
    coarse = metrics.get("coarse_of_groups") or [[] for _ in metrics["groups"]]
    for g, (classes, supers) in enumerate(zip(metrics["groups"], coarse)):
        shown = ", ".join(classes[:8]) + (f", ... ({len(classes)} classes)" if len(classes) > 8 else "")
        lines.append(f"  group {g}: {shown}" + (f"\n           superclasses: {', '.join(supers)}" if supers else ""))
    if "nmi_coarse" in metrics:
        lines.append(f"  NMI(class groups, superclasses) = {metrics['nmi_coarse']:.3f}")
    share = metrics["params_split"] / metrics["params_dense"]
    lines.append(f"  params: dense {metrics['params_dense']:,}  split {metrics['params_split']:,} ({100 * share:.1f}%)")
    lines.append(f"  test accuracy (split model): {100 * metrics['test_acc']:.2f}%  "
                 f"(unsplit before the split {100 * metrics['test_acc_before_split']:.2f}%, "
                 f"right after it {100 * metrics['test_acc_at_split']:.2f}%)")
    if metrics.get("empty_groups"):
        lines.append(f"  WARNING: empty groups {', '.join(metrics['empty_groups'])}: "
                     "those subnetworks have no channels there")
    lines.append(f"  inference, batch 256: dense {metrics['inference_ms_dense_b256']:.1f} ms, "
                 f"split {metrics['inference_ms_split_b256']:.1f} ms")
    for name, result in metrics["baselines"].items():
        nmi = f", NMI {result['nmi_coarse']:.3f}" if "nmi_coarse" in result else ""
        at = f" (at the split {100 * result['test_acc_at_split']:.2f}%)" if "test_acc_at_split" in result else ""
        lines.append(f"  baseline {name}: accuracy {100 * result['test_acc']:.2f}%{at}, "
                     f"params {result['params']:,}{nmi}")
    lines.append(f"  written to {out}/ (metrics.json, log.csv, split.pt; 'splitkern plot {out}' draws the groups)")
    return "\n".join(lines)


def _plan(args) -> None:
    import torch

    import splitkern
    from splitkern.parallel.cost import cost_model, format_cost_model

    model = splitkern.load(args.ckpt).eval()
    example = torch.randn(1, 3, args.image_size, args.image_size)
    workers = tuple(int(w) for w in args.workers.split(","))
    print(format_cost_model(cost_model(model, example, workers, batch=args.batch_size)))


def _rank_device(spec: str, env):
    """The device of this process: ``cuda`` without an index means ``cuda:LOCAL_RANK`` under torchrun
    (NCCL needs one GPU per rank); anything else as given."""
    import torch

    device = torch.device(spec)
    if device.type == "cuda" and device.index is None and int(env.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(env.get("LOCAL_RANK", "0")))
    return device


def _infer(args) -> None:
    import os
    import time

    import torch

    import splitkern
    from splitkern import data

    device = _rank_device(args.device, os.environ)
    if device.type == "cuda":
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device}: this process needs {device}, but there are "
                             f"{torch.cuda.device_count()} CUDA devices (under torchrun: one GPU per rank)")
        torch.cuda.set_device(device)
    model = splitkern.load(args.ckpt).eval().to(device)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        import torch.distributed as dist

        from splitkern.parallel import DistributedSplit

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        model = DistributedSplit(model, example=torch.zeros(1, 3, 32, 32, device=device))
    dataset = data.load(args.data)
    correct, seconds = 0, 0.0
    with torch.no_grad():
        for images, labels in data.batches(dataset.x_test, dataset.y_test, args.batch_size, mean=dataset.mean,
                                           std=dataset.std, train=False, device=device):
            start = time.perf_counter()
            logits = model(images)
            seconds += time.perf_counter() - start
            correct += (logits.argmax(1) == labels).sum().item()
    if rank == 0:
        mode = f"DistributedSplit over {os.environ['WORLD_SIZE']} ranks" if distributed else "one process"
        print(f"test accuracy {100 * correct / len(dataset.y_test):.2f}% ({mode}), "
              f"{len(dataset.y_test) / seconds:.0f} images/s")
    if distributed:  # every rank done before any tears down (a rank leaving early aborts gloo's peers)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(argv=None) -> None:
    args, rest = _parser().parse_known_args(argv)
    if args.command == "kernels":
        from splitkern.kernels import main as kernels_main
        raise SystemExit(kernels_main(rest))
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        from splitkern.info import main as info_main
        info_main()
    elif args.command == "demo":
        from splitkern.demo import run_demo
        run_demo(args.features, args.batch, args.groups, args.repeats, device=args.device)
    elif args.command == "train":
        from splitkern.splitnet.train import run
        print(_summary(run(_train_config(args)), args.out))
    elif args.command == "plan":
        _plan(args)
    elif args.command == "infer":
        _infer(args)
    elif args.command == "plot":
        from splitkern.splitnet.plot import plot
        for path in plot(args.dir):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
