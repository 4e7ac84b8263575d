"""splitkern: SplitNet on fast block-diagonal kernels.

Train a network that learns which classes and features belong together, split it into
disjoint subnetworks, and run them: `splitkern train` (SplitNet and its baselines),
`splitkern plot` (figures of a run), `splitkern infer` / `plan` / `export` (use a split model),
`splitkern info` / `report-kernels` / `layer-speed` (what this install can run, and how fast).
"""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  splitkern train --out runs/demo                       # a few minutes on a CPU, built-in data
  splitkern train --data ~/cifar100 --model wrn16-2 --split 2-2-2 --epochs 15 --baselines dense,random,thin \\
      --precision bf16 --out runs/cifar
  splitkern plot runs/demo
  splitkern export --ckpt runs/demo/split.pt --format onnx --out split.onnx

errors print one line; SPLITKERN_DEBUG=1 (or --debug) shows the traceback."""

# What the CLI reports as "splitkern: error: ..." (exit code 2): mistakes in what the user gave.
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               ImportError)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, keeps the description's and the examples' line breaks.

    Options without a value (flags, None, empty) describe their default in their help text instead."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == () or \
                "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# --- argument types: each names what it wants; argparse turns the ValueError into "argument --x: ..." ---------

def _number(kind, low=None, low_open=False, high=None, high_open=True, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if value != value or (kind is float and abs(value) == float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    parse.__name__ = what or kind.__name__  # argparse names the type in some messages
    return parse


positive_int = _number(int, low=1, what="a positive integer")
non_negative_int = _number(int, low=0, what="an integer >= 0")
positive_float = _number(float, low=0, low_open=True, what="a positive number")
non_negative_float = _number(float, low=0, what="a number >= 0")
probability = _number(float, low=0, high=1, what="in [0, 1)")


def _list_of(item, count=None, what=""):
    def parse(text: str):
        parts = [p.strip() for p in text.split(",")]
        if count is not None and len(parts) != count:
            raise argparse.ArgumentTypeError(f"{text!r}: {what}")
        try:
            return tuple(item(p) for p in parts)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {what} ({exc})") from None
    parse.__name__ = what
    return parse


def _split_spec(text: str) -> str:
    from splitkern.splitnet import SplitSpec

    try:
        return str(SplitSpec.parse(text))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _baselines(text: str) -> tuple[str, ...]:
    from splitkern.splitnet.train import BASELINES

    names = tuple(b.strip() for b in text.split(",") if b.strip())
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {','.join(BASELINES)}")
    return names


def _model_name(text: str) -> str:
    from splitkern.models import parse_model_name

    if text.lower() != "alexnet":
        try:
            parse_model_name(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# --- the parser ------------------------------------------------------------------------------------------------

def _version() -> str:
    import torch

    from splitkern import __version__

    return f"splitkern {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def _device_option(parser, help_text="where to run: cpu, cuda or cuda:N"):
    parser.add_argument("--device", default="cpu", help=help_text)


def _train_parser(sub) -> None:
    train = sub.add_parser("train", formatter_class=_HelpFormatter, help="SplitNet: warm-up, stage 1, split, stage 2 "
                           "(+ baselines on the same schedule)", description="Train SplitNet and its baselines on "
                           "one learning-rate schedule;\nwrites metrics.json, log.csv, split.pt, stage1.pt into --out.")
    data = train.add_argument_group("data and model")
    data.add_argument("--data", default="synthetic",
                      help="'synthetic' (built in), a folder of npz shards, cifar-100-python, or an ImageFolder "
                           "layout DIR/train/<class>/*, DIR/val/<class>/* (+ optional DIR/superclasses.json)")
    data.add_argument("--image-size", type=positive_int, default=None,
                      help="ImageFolder data: crop size (default: 224)")
    data.add_argument("--workers", type=non_negative_int, default=2, help="ImageFolder data: loader processes")
    data.add_argument("--model", default="wrn10-2", type=_model_name,
                      help="wrn{depth}-{widen} (e.g. wrn16-8), alexnet (32x32), or torchvision's resnet18, "
                           "resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, tv-alexnet (224x224)")
    data.add_argument("--split", default="4", type=_split_spec,
                      help="groups per split level, lowest first: 4 (logits only), 4-4, 2-2-2, 2-4-8")
    epochs = train.add_argument_group("schedule (one curve for every arm)")
    epochs.add_argument("--epochs", type=positive_int, default=9,
                        help="total epochs, exactly: 1/5 dense warm-up, then learning the groups, the last 1/5 of "
                             "stage 1 annealed, 7/15 after the split (override the parts below)")
    epochs.add_argument("--stage1-epochs", type=positive_int, default=None,
                        help="warm-up + group-learning epochs (default: epochs - stage2)")
    epochs.add_argument("--stage2-epochs", type=non_negative_int, default=None,
                        help="epochs after the split (default: round(7 * epochs / 15))")
    epochs.add_argument("--warmup-epochs", type=non_negative_int, default=None,
                        help="dense epochs before the groups learn (default: round(epochs / 5); 0 with --init-from)")
    epochs.add_argument("--anneal-epochs", type=non_negative_int, default=None,
                        help="last epochs of stage 1 that fade the weights between groups out (groups frozen; "
                             "split arms alike), so the split changes only BN statistics (default: a fifth of the "
                             "run, leaving one epoch of group learning; 0: a hard cut)")
    epochs.add_argument("--anneal-shape", choices=("linear", "quadratic"), default="linear",
                        help="how the weights between groups fade: linearly to 0 at the cut, or quadratically "
                             "to 0 at 3/4 of the anneal, the rest training the split function (default: linear)")
    epochs.add_argument("--batch-size", type=positive_int, default=128,
                        help="training batch per process (under torchrun: per rank; the global batch is N times it; "
                             "alexnet, tv-alexnet: 32 unless given)")
    epochs.add_argument("--lr", type=positive_float, default=0.1,
                        help="peak learning rate of the one schedule (alexnet, tv-alexnet: 0.02 unless given: no "
                             "BatchNorm)")
    epochs.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                        help="per-step curve over all epochs: cosine to 0, or x0.1 at 50%% and 75%%")
    epochs.add_argument("--dropout", type=probability, default=0.0,
                        help="dropout in every residual block (AlexNet: before fc6, fc7), in every arm alike")
    epochs.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="on conv/linear weights only")
    method = train.add_argument_group("SplitNet")
    method.add_argument("--gammas", type=_list_of(non_negative_float, 3, "three numbers >= 0 separated by commas"),
                        default=(1.0, 1.0, 10.0), help="weights of R_D (disjoint), R_W (group weight), R_E (balance)")
    method.add_argument("--assign-lr", type=positive_float, default=1.0,
                        help="peak learning rate of the assignment logits (on the same curve)")
    method.add_argument("--assign-init", choices=("cluster", "balanced", "random"), default="balanced",
                        help="start the groups from a k-means of the classes' FC rows (balanced: equal-sized "
                             "class groups), or at random")
    method.add_argument("--assign-confidence", type=positive_float, default=1.0,
                        help="logit given to the clustered group at init (higher = harder to move)")
    method.add_argument("--init-from", default=None,
                        help="split a model you already trained: a dense model saved by splitkern.save (e.g. "
                             "a dense run's dense/dense.pt); skips the warm-up")
    method.add_argument("--baselines", type=_baselines, default=(),
                        help="comma-separated arms on the same schedule: dense, random, cluster, thin "
                             "(default: none)")
    run = train.add_argument_group("run")
    run.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                     help="autocast dtype of the forward pass (the regularisers stay fp32)")
    _device_option(run)
    run.add_argument("--seed", type=int, default=0, help="seeds the weights, the data order and the groups' init")
    run.add_argument("--out", required=True, help="output folder")
    guard = run.add_mutually_exclusive_group()
    guard.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    guard.add_argument("--overwrite", action="store_true", help="delete the run already in --out and start again")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard events (pip install 'splitkern[tensorboard]')")
    run.add_argument("--no-tensorboard", action="store_true", help=argparse.SUPPRESS)  # the old default's opt-out
    run.add_argument("--no-progress", action="store_true", help="no progress bars and no per-epoch lines")
    run.add_argument("--sync-bn", action="store_true",
                     help="under torchrun: BatchNorm statistics over all ranks' batches (SyncBatchNorm; GPUs only)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="splitkern", description=__doc__, epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", formatter_class=_HelpFormatter,
                          help="list usable backends and built kernels; with --model, the execution strategy each "
                               "split layer of a model takes")
    info.add_argument("--model", default=None, help="split.pt written by 'splitkern train': plan and list its "
                                                    "layers' strategies (splitkern.nn.strategy)")
    info.add_argument("--batch-size", type=_list_of(positive_int, what="positive integers separated by commas"),
                      default=(1, 32), help="--model: batch sizes to plan for")
    info.add_argument("--image-size", type=positive_int, default=None,
                      help="--model: input height = width (default: the size the model was trained on, else 32)")
    _device_option(info)
    sub.add_parser("report-kernels", aliases=["kernels"], add_help=False,
                   help="static kernel report (registers, spills, smem, tensor cores) for sm_80/sm_90 "
                        "('kernels': its old name, until 0.3)")

    speed = sub.add_parser("layer-speed", formatter_class=_HelpFormatter,
                           help="speed test: SplitLinear vs nn.Linear (forward+backward) on random data",
                           description="Times forward+backward of a dense nn.Linear, a per-group loop and "
                                       "SplitLinear\nwith random unequal groups, after checking they agree.")
    speed.add_argument("--features", type=positive_int, default=2048, help="in = out features")
    speed.add_argument("--batch", type=positive_int, default=256, help="rows of the input")
    speed.add_argument("--groups", type=positive_int, default=4, help="feature groups")
    speed.add_argument("--repeats", type=positive_int, default=10, help="timed repetitions (the median is shown)")
    _device_option(speed)

    _train_parser(sub)

    plot = sub.add_parser("plot", formatter_class=_HelpFormatter,
                          help="figures of a train folder: groups, block-diagonal weights, curves, accuracy vs size")
    plot.add_argument("dir", help="a folder written by 'splitkern train'")

    plan = sub.add_parser("plan", formatter_class=_HelpFormatter,
                          help="cost model of a split model: FLOPs per subtree, speedup on N workers")
    plan.add_argument("--ckpt", required=True, help="split.pt written by 'splitkern train'")
    plan.add_argument("--workers", type=_list_of(positive_int, what="positive integers separated by commas"),
                      default=(1, 2, 4, 8), help="worker counts to plan for")
    plan.add_argument("--image-size", type=positive_int, default=None,
                      help="input height = width (default: the size the model was trained on, else 32)")
    plan.add_argument("--batch-size", type=positive_int, default=256, help="batch for the communication volumes")

    infer = sub.add_parser("infer", formatter_class=_HelpFormatter,
                           help="test accuracy of a split model; under torchrun its subtrees run on different "
                                "ranks (DistributedSplit)")
    infer.add_argument("--ckpt", required=True, help="split.pt written by 'splitkern train'")
    infer.add_argument("--data", default="synthetic", help="the test split of this data (as train's --data)")
    infer.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch")
    infer.add_argument("--workers", type=non_negative_int, default=2, help="ImageFolder data: loader processes")
    _device_option(infer, "'cpu', 'cuda' or 'cuda:N'; 'cuda' under torchrun: each rank takes cuda:LOCAL_RANK")

    export = sub.add_parser("export", formatter_class=_HelpFormatter,
                            help="write a split model that runs without splitkern: TorchScript, ONNX or torch.export",
                            description="plain: TorchScript of a torch.nn-only copy (load: torch.jit.load)\n"
                                        "onnx:  ONNX of it (onnxruntime; pip install 'splitkern[onnx]')\n"
                                        "pt2:   a torch.export program of it (load: torch.export.load)\n"
                                        "Checks the export against the split model and reports parameters and CPU "
                                        "latency\nof the exported, split and dense models.")
    export.add_argument("--ckpt", required=True, help="split.pt written by 'splitkern train'")
    export.add_argument("--format", choices=("plain", "onnx", "pt2"), default="plain", help="what to write")
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--image-size", type=positive_int, default=None,
                        help="input height = width (default: the size the model was trained on, else 32)")
    export.add_argument("--batch-size", type=positive_int, default=32, help="batch of the latency comparison")
    return parser


# --- commands ----------------------------------------------------------------------------------------------

def _epoch_split(args) -> tuple[int, int, int, int]:
    """``(stage1, stage2, warmup, anneal)`` epochs: ``--epochs`` exactly, unless the parts are given.

    By default a fifth of the run is the dense warm-up, 7/15 of it (rounded) follow the split, and the last
    fifth of stage 1 is the anneal (leaving at least one epoch of group learning): ``--epochs 15`` is
    3 + 2 + 3 + 7, the best cut point of the CIFAR-100 sweep (experiments/cifar100/README.md).
    """
    epochs = args.epochs
    stage2 = args.stage2_epochs if args.stage2_epochs is not None else (round(epochs * 7 / 15) if epochs > 1 else 0)
    stage1 = args.stage1_epochs if args.stage1_epochs is not None else epochs - stage2
    if stage1 < 1:
        raise ValueError(f"--epochs {epochs} leaves no epoch before the split with --stage2-epochs {stage2}")
    explicit = "--epochs" in getattr(args, "given", ())
    if explicit and stage1 + stage2 != epochs:
        raise ValueError(f"--epochs {epochs} but --stage1-epochs {stage1} + --stage2-epochs {stage2} = "
                         f"{stage1 + stage2}: give the total or the parts")
    fifth = round((stage1 + stage2) / 5)
    default_warmup = 0 if args.init_from else min(fifth, stage1 - 1)
    warmup = args.warmup_epochs if args.warmup_epochs is not None else default_warmup
    if warmup >= stage1:
        raise ValueError(f"--warmup-epochs {warmup} must be below the {stage1} epochs of stage 1 (the warm-up is "
                         "part of it)")
    default_anneal = max(0, min(fifth, stage1 - warmup - 1))
    anneal = args.anneal_epochs if args.anneal_epochs is not None else default_anneal
    return stage1, stage2, warmup, anneal


def _train_config(args):
    from splitkern.splitnet.train import TrainConfig

    stage1, stage2, warmup, anneal = _epoch_split(args)
    return TrainConfig(data=args.data, image_size=args.image_size, workers=args.workers, model=args.model,
                       split=args.split, stage1_epochs=stage1,
                       stage2_epochs=stage2, warmup_epochs=warmup, batch_size=args.batch_size, lr=args.lr,
                       anneal_epochs=anneal, anneal_shape=args.anneal_shape,
                       schedule=args.schedule, dropout=args.dropout, weight_decay=args.weight_decay,
                       init_from=args.init_from, assign_lr=args.assign_lr, assign_init=args.assign_init,
                       gammas=tuple(args.gammas), assign_confidence=args.assign_confidence, precision=args.precision,
                       baselines=tuple(args.baselines), device=args.device, seed=args.seed, out=args.out,
                       resume=args.resume, overwrite=args.overwrite, sync_bn=args.sync_bn,
                       tensorboard=args.tensorboard and not args.no_tensorboard, progress=not args.no_progress)


def _inference_line(metrics: dict, speed: dict | None) -> str:
    """The summary's inference line: both times, the speedup, and what bounds it (``speed``: what
    :func:`_split_vs_dense` measured; without it, the trainer's single timing in metrics.json)."""
    if speed:
        dense, split, how = speed["dense_ms"], speed["split_ms"], "fastest of 5 interleaved rounds"
    else:
        dense, split, how = metrics["inference_ms_dense_b256"], metrics["inference_ms_split_b256"], "median of 5"
    line = f"  inference, batch 256, {metrics['config']['device']} ({how}): dense {dense:.1f} ms, split " \
           f"{split:.1f} ms ({dense / split:.2f}x dense"
    if speed:
        share = speed["flop_share"]
        line += f";\n    the split model does {100 * share:.0f}% of dense's FLOPs, so at most " \
                f"{1 / share:.1f}x: the unsplit trunk, BN and ReLU cost the same in both"
    line += ")"
    if split > dense:
        line += ("\n    slower than dense here: each split layer keeps the fastest of its execution strategies, one of "
                 "which\n    ('masked_dense') costs what dense does, so the gap is timing noise: a busy machine, or "
                 "a strategy chosen\n    while it was busy (benchmarks/bench_split_inference.py times more rounds)")
    return line


def _summary(metrics: dict, out: str, speed: dict | None = None) -> str:
    lines = [f"SplitNet {metrics['model']} split {metrics['spec']} on {metrics['data']}:"]
    coarse = metrics.get("coarse_of_groups") or [[] for _ in metrics["groups"]]
    for g, (classes, supers) in enumerate(zip(metrics["groups"], coarse)):
        shown = ", ".join(classes[:8]) + (f", ... ({len(classes)} classes)" if len(classes) > 8 else "")
        lines.append(f"  group {g}: {shown}" + (f"\n           superclasses: {', '.join(supers)}" if supers else ""))
    if "nmi_coarse" in metrics:
        lines.append(f"  NMI(class groups, superclasses) = {metrics['nmi_coarse']:.3f}")
    share = metrics["params_split"] / metrics["params_dense"]
    lines.append(f"  params: split {metrics['params_split']:,} = {100 * share:.1f}% of dense "
                 f"{metrics['params_dense']:,} (conv/linear weights and biases,\n    BN excluded: the split "
                 "drops the weights between groups)")
    lines.append(f"  test accuracy (split model): {100 * metrics['test_acc']:.2f}%  "
                 f"(unsplit before the split {100 * metrics['test_acc_before_split']:.2f}%, "
                 f"right after it {100 * metrics['test_acc_at_split']:.2f}%)")
    if metrics.get("empty_groups"):
        lines.append(f"  WARNING: empty groups {', '.join(metrics['empty_groups'])}: "
                     "those subnetworks have no channels there")
    lines.append(_inference_line(metrics, speed))
    for name, result in metrics["baselines"].items():
        nmi = f", NMI {result['nmi_coarse']:.3f}" if "nmi_coarse" in result else ""
        at = f" (at the split {100 * result['test_acc_at_split']:.2f}%)" if "test_acc_at_split" in result else ""
        lines.append(f"  baseline {name}: accuracy {100 * result['test_acc']:.2f}%{at}, "
                     f"params {result['params']:,}{nmi}")
    lines.append(f"  written to {out}/ (metrics.json, log.csv, split.pt; 'splitkern plot {out}' draws the figures)")
    return "\n".join(lines)


def _image_size(info: dict, given: int | None, option: str = "--image-size") -> int:
    """The input size to use for a checkpoint: ``given`` if it agrees with the recorded one."""
    recorded = info["input_shape"]
    if given is not None and recorded is not None and given != recorded[1]:
        raise ValueError(f"{option} {given}: the model was trained on {recorded[1]}x{recorded[2]} images")
    return given or (recorded[1] if recorded else 32)


def _plan(args) -> None:
    import torch

    import splitkern
    from splitkern.parallel.cost import cost_model, format_cost_model
    from splitkern.splitnet.io import describe

    size = _image_size(describe(args.ckpt), args.image_size)
    model = splitkern.load(args.ckpt).eval()
    example = torch.randn(1, 3, size, size)
    print(format_cost_model(cost_model(model, example, args.workers, batch=args.batch_size)))


def check_data_fits(info: dict, dataset, ckpt) -> None:
    """A ``ValueError`` when the checkpoint's classes or recorded input shape differ from the data's."""
    classes = info["config"].get("num_classes")
    if classes != dataset.num_classes:
        raise ValueError(f"--ckpt {ckpt} has {classes} classes, the data has {dataset.num_classes}: "
                         "it was trained on other data")
    if info["input_shape"] is not None and tuple(info["input_shape"]) != dataset.input_shape:
        raise ValueError(f"--ckpt {ckpt} was trained on {tuple(info['input_shape'])} images (C, H, W), the data "
                         f"has {dataset.input_shape}")


def _infer(args) -> None:
    import torch

    import splitkern
    from splitkern import data
    from splitkern.backend import check_device, rank_device
    from splitkern.data.image_folder import is_image_folder
    from splitkern.parallel.distributed import process_group
    from splitkern.splitnet.io import describe

    device = check_device(rank_device(args.device, os.environ), "--device")
    info = describe(args.ckpt)
    recorded = info["input_shape"][1] if info["input_shape"] else None
    dataset = data.load(args.data, workers=args.workers, image_size=recorded if is_image_folder(args.data) else None)
    check_data_fits(info, dataset, args.ckpt)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = splitkern.load(args.ckpt).eval().to(device)
    with process_group(device):
        _evaluate(model, dataset, args.batch_size, device)


def _evaluate(model, dataset, batch_size: int, device) -> None:
    """Test accuracy and images/s of ``model``; its subtrees across the ranks of a process group."""
    import time

    import torch

    from splitkern.parallel import DistributedSplit

    import splitkern

    dist = torch.distributed
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        model = DistributedSplit(model, example=torch.zeros(1, *dataset.input_shape, device=device))
    else:  # BatchNorm folded, strategies planned for the batch, on CUDA a graph replayed per batch shape
        model = splitkern.accelerate(model, torch.zeros(batch_size, *dataset.input_shape, device=device))
    correct, seconds = 0, 0.0
    with torch.no_grad():
        for images, labels in dataset.test_batches(batch_size, device):
            start = time.perf_counter()
            logits = model(images)
            seconds += time.perf_counter() - start
            correct += (logits.argmax(1) == labels).sum().item()
    if not distributed or dist.get_rank() == 0:
        mode = f"DistributedSplit over {dist.get_world_size()} ranks" if distributed else "one process"
        print(f"test accuracy {100 * correct / dataset.num_test:.2f}% ({mode}), "
              f"{dataset.num_test / seconds:.0f} images/s")


def _export(args) -> None:
    from splitkern.export import export_report
    from splitkern.splitnet.io import describe

    size = _image_size(describe(args.ckpt), args.image_size)
    print(export_report(args.ckpt, args.format, args.out, image_size=size, batch_size=args.batch_size))


# Defaults that depend on --model, taken when the option is not given. AlexNet has no BatchNorm: from PyTorch's
# default init, lr 0.1 on 128-image batches leaves it at chance (CE = ln 16) for the first epochs on the built-in
# data; lr 0.02 on 32-image batches (4x the steps) learns within one epoch there.
MODEL_DEFAULTS = {"alexnet": {"lr": 0.02, "batch_size": 32}, "tv-alexnet": {"lr": 0.02, "batch_size": 32}}


def apply_model_defaults(args) -> None:
    """Give ``args`` the :data:`MODEL_DEFAULTS` of its ``--model`` for every option the command line left out."""
    for name, value in MODEL_DEFAULTS.get(args.model.lower(), {}).items():
        if "--" + name.replace("_", "-") not in getattr(args, "given", ()):
            setattr(args, name, value)


# --- what a train command can be refused for without loading data (a mistake costs no epoch, writes no --out) ---

def _classes_of(data: str) -> int | None:
    """How many classes ``--data`` holds, read without loading it; None where only loading can tell."""
    import inspect
    import json
    from pathlib import Path

    if data == "synthetic":
        from splitkern.data.datasets import synthetic_hierarchy

        defaults = inspect.signature(synthetic_hierarchy).parameters
        return defaults["coarse"].default * defaults["fine_per_coarse"].default
    folder = Path(data)
    if (folder / "train").is_dir() and (folder / "val").is_dir():  # ImageFolder: one folder per class
        return sum(p.is_dir() for p in (folder / "train").iterdir()) or None
    if (folder / "train").is_file() and (folder / "meta").is_file():  # cifar-100-python
        return 100
    try:  # npz shards: meta.json names the classes (without it, the reader assumes CIFAR-100's 100)
        return len(json.loads((folder / "meta.json").read_text())["fine_names"])
    except (OSError, ValueError, KeyError, TypeError):
        return 100 if any(folder.glob("train*.npz")) else None


def check_model_fits(args) -> None:
    """A ``ValueError`` naming the argument when ``--split`` does not fit ``--model`` (more levels than it has,
    more groups than features or classes at a level) or ``--init-from`` is not a dense ``--model`` for the data."""
    import torch

    from splitkern import models
    from splitkern.splitnet.io import DENSE_FORMAT, describe

    classes = _classes_of(args.data)
    where = f"--data {args.data} has {classes} classes" if classes else "the data"
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        try:
            aware = models.build(args.model, classes or 1_000_000, args.split)
        except ValueError as exc:
            raise ValueError(f"--split {args.split} --model {args.model}: {exc}") from None
        output = aware.split_plan.output_key  # checked last: a level's own features say more than the classes
        for key, assignment in sorted(aware.assignments.items(), key=lambda item: item[0] == output):
            if assignment.groups > assignment.features:
                what = f"{where}" if key == output else \
                    f"{args.model} has {assignment.features} features at {key}"
                raise ValueError(f"--split {args.split}: {assignment.groups} groups, but {what}; every group needs "
                                 "at least one (use fewer groups)")
        if args.init_from is None:
            return
        try:
            info = describe(args.init_from)
        except (ValueError, FileNotFoundError, IsADirectoryError) as exc:
            raise ValueError(f"--init-from: {exc}") from None
        dense = models.build(args.model, info["config"].get("num_classes", 0))
    if info["format"] != DENSE_FORMAT:
        raise ValueError(f"--init-from {args.init_from} holds a split model; give a dense one (e.g. dense/dense.pt)")
    if classes and info["config"].get("num_classes") != classes:
        raise ValueError(f"--init-from {args.init_from} has {info['config'].get('num_classes')} classes, {where}")
    shape = {k: v for k, v in info["config"].items() if k != "dropout"}
    if info["model"] != type(dense).__name__ or shape != {k: v for k, v in dense.config.items() if k != "dropout"}:
        raise ValueError(f"--init-from {args.init_from} holds a {info['model']} {shape}, not --model {args.model}")


def _legend(gammas) -> str:
    """What the numbers on screen during training are."""
    g1, g2, g3 = (f"{g:g}" for g in gammas)
    return ("stage 1 learns the groups by minimising loss = CE + " + f"{g1}*R_D + {g2}*R_W + {g3}*R_E (--gammas); "
            "R_D: overlap of the groups\n(1 = uniform, 0 = disjoint), R_W: weight between groups (normalised), R_E: "
            "balance (1 = equal groups).\nThe progress bar shows that loss; each epoch line shows CE and the terms "
            "unweighted, test accuracy,\nNMI (class groups vs the data's superclasses, 1 = identical), off-block "
            "(the share of the split layers'\nweight energy between groups: what the split will drop) and the classes "
            "and features that changed group.")


def _split_vs_dense(out: str, model_name: str, device: str, batch: int = 256, rounds: int = 5) -> dict | None:
    """The run's split model (``out``/split.pt) against a dense ``model_name`` of its classes: ``flop_share``
    (split FLOPs / dense FLOPs per image) and ``dense_ms``, ``split_ms`` (inference at ``batch``, no grad,
    channels_last, the fastest of ``rounds`` interleaved rounds: a busy machine slows both alike)."""
    import time
    from pathlib import Path

    import torch

    import splitkern
    from splitkern import models
    from splitkern.parallel.subtrees import count_flops
    from splitkern.splitnet.io import describe

    path = Path(out) / "split.pt"
    if not path.is_file():
        return None
    info = describe(path)
    shape = tuple(info["input_shape"] or (3, 32, 32))
    split_model = splitkern.load(path).eval()
    dense = models.build(model_name, info["config"]["num_classes"]).eval()
    example = torch.zeros(1, *shape)
    share = count_flops(split_model, example) / count_flops(dense, example)
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=torch.channels_last)
    runners = {name: m.to(device, memory_format=torch.channels_last) for name, m in
               (("dense", dense), ("split", split_model))}
    best = dict.fromkeys(runners, float("inf"))
    with torch.no_grad():
        for m in runners.values():
            m(x)  # the split layers choose their execution strategies here
        for _ in range(rounds):
            for name, m in runners.items():
                start = time.perf_counter()
                m(x)
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                best[name] = min(best[name], time.perf_counter() - start)
    return {"flop_share": share, "dense_ms": 1e3 * best["dense"], "split_ms": 1e3 * best["split"]}


def _train(args) -> None:
    from splitkern.backend import check_device, rank_device
    from splitkern.splitnet.train import run

    check_device(rank_device(args.device, os.environ), "--device")
    apply_model_defaults(args)
    check_model_fits(args)
    if not args.no_progress:
        print(_legend(args.gammas))
    metrics = run(_train_config(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary
        print(_summary(metrics, args.out, _split_vs_dense(args.out, args.model, args.device)))


def _layer_speed(args) -> None:
    from splitkern.backend import check_device
    from splitkern.layer_speed import run_layer_speed

    check_device(args.device, "--device")
    run_layer_speed(args.features, args.batch, args.groups, args.repeats, device=args.device)


def _plot(args) -> None:
    from splitkern.splitnet.plot import plot

    for path in plot(args.dir):
        print(f"wrote {path}")


def _info(args) -> None:
    from splitkern.backend import check_device
    from splitkern.info import model_report, report

    if args.model is None:
        print(report())
        return
    from splitkern.splitnet.io import describe

    device = check_device(args.device, "--device")
    size = _image_size(describe(args.model), args.image_size)
    print(model_report(args.model, args.batch_size, device, size))


COMMANDS = {"info": _info, "layer-speed": _layer_speed, "train": _train, "plot": _plot, "plan": _plan,
            "infer": _infer, "export": _export}


def _given_options(argv) -> set[str]:
    return {a.split("=")[0] for a in argv if a.startswith("--")}


def main(argv=None) -> int:
    """The ``splitkern`` command. Returns (and as a script exits with) 0, or 2 after one error line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("report-kernels", "kernels"):
        from splitkern.analysis.kernels import main as report_kernels
        return report_kernels(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.given = _given_options(argv)
    debug = args.debug or os.environ.get("SPLITKERN_DEBUG", "") not in ("", "0")
    from splitkern.backend import BackendUnavailableError

    try:
        COMMANDS[args.command](args)
    except (*USER_ERRORS, BackendUnavailableError) as exc:
        if debug:
            raise
        message = str(exc) or type(exc).__name__
        print(f"splitkern: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        hint = " (continue with the same command and --resume)" if args.command == "train" else ""
        print(f"splitkern: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
