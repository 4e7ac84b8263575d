"""SplitNet end to end, on one fair schedule: warm-up, stage 1, split, stage 2, and the baselines.

:func:`run` trains the main model and the requested baselines into ``out``. Every arm follows
ONE learning-rate curve over the run's total epochs (``stage1_epochs + stage2_epochs``, the
warm-up included): cosine from ``lr`` to 0 per step (or ``schedule="step"``: x0.1 at 50% and
75%). Phases and the split do not restart it; baselines branch off at a step and continue it.
Every arm has the same ``dropout`` (placed as in :func:`splitkern.models.build`) and weight decay
on conv/linear weights only. (docs/design.md §1.5.)

Epochs ``[0, W)``: the shared dense warm-up (``warmup_epochs``; skipped with ``init_from``,
which starts from a trained dense model saved by :func:`splitkern.save`).

* ``splitnet``: epochs ``[W, S)`` of stage 1 (``S = stage1_epochs``): weights + assignments
  with ``CE + regularization``, the assignments initialised from a clustering of the classes'
  FC rows (``assign_init="cluster"``; ``"balanced"``: a k-means with equal-sized class groups) or left
  at their N(0, 0.01^2) init (``"random"``), their
  logits at their own rate (``assign_lr``, on the same curve). At epoch ``S`` the hard split;
  BN statistics are recomputed; epochs ``[S, S + stage2_epochs)`` fine-tune the split model.
* ``dense``: the same network, never split, epochs ``[W, S + stage2_epochs)``; writes ``dense.pt``.
* ``random`` / ``cluster``: the ``dense`` arm's model at epoch ``S`` (the step SplitNet splits),
  split along random balanced / k-means groups (equal-sized under ``assign_init="balanced"``, as SplitNet's
  init), then the same stage 2 as SplitNet.
* ``thin``: a dense network of the same family, its width chosen so its parameters are within a
  few percent of SplitNet's split model, trained from scratch for the whole schedule.

With ``anneal_epochs = E`` the last E epochs of stage 1 (SplitNet's, and those of ``random`` /
``cluster``, which then branch off the ``dense`` arm at epoch ``S - E``) are an anneal: the groups
stay at their argmax, the regularisers are off, and every split layer's forward uses
``W * (B + lam (1 - B))`` (B: the block mask of the hard groups) with ``lam`` going 1 -> 0 per step
(:class:`~splitkern.splitnet.blocks.BlockAnneal`). It ends at the split model's function, so the
split changes only BN's statistics.

Split arms report ``test_acc_before_split`` (the unsplit model at epoch ``S``),
``test_acc_at_split`` (the split model, BN recalibrated, before fine-tuning), ``test_acc`` and
``off_block_fraction`` (per split layer, ``||(1 - B) W||^2 / ||W||^2`` of the weights the forward uses
at the split); with an anneal also ``test_acc_anneal_start`` and ``off_block_fraction_anneal_start``.
Every epoch writes a checkpoint; ``resume=True`` continues a killed run where it stopped. An
``out`` folder that already holds a run needs ``resume=True`` or ``overwrite=True``.
Results: ``metrics.json``; ``log.csv``, one row per epoch (:data:`LOG_FIELDS`: the lr at the epoch's
last step, the epoch means of the cross-entropy, of the unweighted regularisers R_D, R_W, R_E
(empty where the phase has none) and of the whole objective, test accuracy, NMI, the mean
off-block fraction over the split layers and the classes / features whose hard group changed in the
epoch (split-aware phases only), seconds); ``off_block.csv``, the per-layer fractions per epoch; also
printed as one line per epoch when ``progress``; TensorBoard events when ``tensorboard``;
``split.pt`` (for :func:`splitkern.load`) and ``stage1.pt`` (for ``splitkern plot``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from splitkern import data as sk_data
from splitkern import models
from splitkern.backend import check_device, rank_device
from splitkern.nn import SplitConv2d, SplitLinear
from splitkern.parallel.distributed import process_group
from splitkern.splitnet import blocks, convert, grouping, io
from splitkern.splitnet.plan import is_split

BASELINES = ("dense", "random", "cluster", "thin")
SCHEDULES = ("cosine", "step")
ASSIGN_INITS = ("cluster", "balanced", "random")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DECAYED_LAYERS = (nn.Conv2d, nn.Linear, SplitConv2d, SplitLinear)
BN_RECALIBRATION_BATCHES = 50
REG_TERMS = ("R_D", "R_W", "R_E")
LOG_FIELDS = ["run", "phase", "epoch", "lr", "train_ce", "r_d", "r_w", "r_e", "train_loss", "test_acc",
              "nmi_coarse", "off_block", "classes_moved", "features_moved", "seconds"]
ANNEAL_KEYS = ("test_acc_anneal_start", "off_block_fraction_anneal_start")
BLOCK_FIELDS = ["run", "phase", "epoch", "layer", "off_block_fraction"]
RUN_OUTPUTS = ("log.csv", "off_block.csv", "metrics.json", "stage1.pt", "split.pt", "tensorboard", "warmup",
               "splitnet", *BASELINES)


@dataclass
class TrainConfig:
    """Everything one SplitNet run needs; :func:`train` / ``splitkern train`` take it.

    The defaults are the settings the CIFAR-100 fair-protocol runs measured (experiments/cifar100):
    one cosine curve from ``lr`` 0.1, SGD + Nesterov, weight decay 5e-4 on conv/linear weights, no
    dropout, gammas (R_D, R_W, R_E) = (1, 1, 10) with the assignment logits at ``assign_lr`` 1 and
    the balanced clustered init at confidence 1 (``assign_init="balanced"``: equal-sized k-means class
    groups; on the CIFAR-100 warm-up no class leaves them under the regularisers, where the plain
    k-means init's 88/12 groups lose 31 classes to balancing and end at a lower NMI, see
    experiments/cifar100/README.md). ``stage1_epochs`` counts the warm-up; the run lasts
    ``stage1_epochs + stage2_epochs`` epochs. ``data``/``model``/``split`` default to a small
    built-in problem that trains in a few minutes on a CPU.
    """

    data: str = "synthetic"
    image_size: int | None = None
    workers: int = 2
    model: str = "wrn10-2"
    split: str = "4"
    stage1_epochs: int = 6
    stage2_epochs: int = 2
    warmup_epochs: int = 2
    anneal_epochs: int = 0
    anneal_shape: str = "linear"
    batch_size: int = 128
    lr: float = 0.1
    schedule: str = "cosine"
    assign_lr: float = 1.0
    weight_decay: float = 5e-4
    dropout: float = 0.0
    gammas: tuple[float, float, float] = convert.DEFAULT_GAMMAS
    assign_init: str = "balanced"
    assign_confidence: float = 1.0
    precision: str = "fp32"
    baselines: tuple[str, ...] = ()
    init_from: str | None = None
    device: str = "cpu"
    seed: int = 0
    out: str = "runs/splitnet"
    resume: bool = False
    overwrite: bool = False
    sync_bn: bool = False
    tensorboard: bool = False
    progress: bool = True

    @property
    def total_epochs(self) -> int:
        return self.stage1_epochs + self.stage2_epochs

    def validate(self) -> None:
        for name in ("stage1_epochs", "stage2_epochs", "warmup_epochs", "anneal_epochs", "batch_size", "seed",
                     "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.stage1_epochs < 1 or self.stage2_epochs < 0:
            raise ValueError(f"stage1_epochs must be >= 1 and stage2_epochs >= 0, got {self.stage1_epochs} "
                             f"and {self.stage2_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        for name in ("lr", "assign_lr"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues the run in out, "
                             "overwrite deletes it")
        if not 0 <= self.warmup_epochs < self.stage1_epochs:
            raise ValueError(f"warmup_epochs must be in [0, stage1_epochs), got {self.warmup_epochs}")
        if not 0 <= self.anneal_epochs <= self.stage1_epochs - self.warmup_epochs:
            raise ValueError(f"anneal_epochs must be in [0, stage1_epochs - warmup_epochs] = "
                             f"[0, {self.stage1_epochs - self.warmup_epochs}] (the anneal ends stage 1), got "
                             f"{self.anneal_epochs}")
        if self.anneal_shape not in blocks.ANNEAL_SHAPES:
            raise ValueError(f"anneal_shape must be one of {blocks.ANNEAL_SHAPES}, got {self.anneal_shape!r}")
        if self.init_from is not None and self.warmup_epochs:
            raise ValueError(f"init_from starts from a trained model and skips the warm-up: warmup_epochs "
                             f"must be 0, got {self.warmup_epochs}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.assign_confidence <= 0:
            raise ValueError(f"assign_confidence must be > 0, got {self.assign_confidence}")
        gammas = tuple(self.gammas)
        if len(gammas) != 3 or not all(isinstance(g, (int, float)) and 0 <= g < math.inf for g in gammas):
            raise ValueError(f"gammas must be three finite numbers >= 0 (R_D, R_W, R_E), got {self.gammas!r}")
        if self.assign_init not in ASSIGN_INITS:
            raise ValueError(f"assign_init must be one of {ASSIGN_INITS}, got {self.assign_init!r}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        if self.model.lower() != "alexnet":
            models.parse_model_name(self.model)
        if self.model.lower() in models.TORCHVISION_NAMES and "thin" in self.baselines:
            raise ValueError(f"baselines: 'thin' needs a width to shrink, which torchvision's {self.model} does not "
                             "expose; drop it or use a wrn/alexnet model")


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` of ``total_steps`` as a fraction of the peak rate (never rises)."""
    t = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return 0.1 ** ((t >= 0.5) + (t >= 0.75))


@dataclass
class Phase:
    """Epochs ``[first_epoch, first_epoch + epochs)`` of the run's schedule for one arm, checkpointed per epoch."""

    run: str
    name: str
    first_epoch: int
    epochs: int
    regularize: bool = False
    learn_assignments: bool = False
    anneal: blocks.BlockAnneal | None = None  # sets the off-block scale at every step
    keep: tuple[int, ...] = ()  # epochs completed after which the checkpoint is also kept (:meth:`Trainer.kept`)
    history: list = field(default_factory=list)


class Trainer:
    """Runs the arms of one :class:`TrainConfig`; data-parallel when a process group is initialised.

    Under ``torchrun`` (see :func:`run`) every rank builds the same models from the same seed, draws
    the same epoch from the same generator and trains on its shard of it (``batch_size`` per rank)
    through ``DistributedDataParallel``; evaluation is sharded and summed; rank 0 alone writes files.
    """

    def __init__(self, config: TrainConfig, dataset: sk_data.ImageDataset | None = None):
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.rank, self.world = _rank_and_world()
        self.device = check_device(rank_device(config.device, os.environ), "device")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        check_out(self.out, config.resume, config.overwrite)
        _barrier(self.world)  # every rank has looked before rank 0 deletes anything
        if self.is_main:
            prepare_out(self.out, config.resume, config.overwrite)
        self.data = dataset if dataset is not None else sk_data.load(config.data, image_size=config.image_size,
                                                                      workers=config.workers)
        check_input_size(config.model, self.data.input_shape)
        self.start_model = load_init(config.init_from, config.model, self.data.num_classes) \
            if config.init_from is not None else None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.gen = torch.Generator().manual_seed(config.seed)
        shard = math.ceil(self.data.num_train / self.world)
        self.steps_per_epoch = math.ceil(shard / config.batch_size)
        self.log_path = self.out / "log.csv"
        self.writer = self._writer() if config.tensorboard and self.is_main else None
        self._dense_at_split = None  # the dense arm at the split step, trained on first use

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that writes logs, checkpoints and results."""
        return self.rank == 0

    def _writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("tensorboard=True (--tensorboard) needs the 'tensorboard' package: "
                              "pip install 'splitkern[tensorboard]'") from exc
        return SummaryWriter(str(self.out / "tensorboard"))

    # --- models -------------------------------------------------------------------------------
    def build(self, split=True, width=None):
        torch.manual_seed(self.config.seed)
        model = models.build(self.config.model, self.data.num_classes, self.config.split if split else None,
                             dropout=self.config.dropout, width=width)
        return self.to_device(model)

    def to_device(self, model):
        return model.to(self.device, memory_format=torch.channels_last)

    def split_aware(self, dense):
        """A split-aware model (assignments at their init) holding ``dense``'s weights."""
        return load_dense_weights(self.build(), dense_state(dense), f"the dense {self.config.model}")

    def _optimizer(self, model, phase: Phase):
        """SGD + Nesterov; weight decay on conv/linear weights only; assignment logits at ``assign_lr``."""
        c = self.config
        assignments = list(model.assignments.parameters()) if hasattr(model, "assignments") else []
        decayed = {id(blocks.weight_parameter(m)) for m in model.modules() if isinstance(m, DECAYED_LAYERS)}
        skip = {id(p) for p in assignments}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
        groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": c.weight_decay, "peak": c.lr},
                  {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0, "peak": c.lr}]
        if assignments and phase.learn_assignments:
            groups.append({"params": assignments, "weight_decay": 0.0, "peak": c.assign_lr})
        for group in groups:
            group["lr"] = group["peak"]
        return torch.optim.SGD([g for g in groups if g["params"]], momentum=0.9, nesterov=True)

    def set_lr(self, optimizer, step: int) -> float:
        """Put every group at its peak rate times the schedule at global ``step``; returns the network's rate."""
        factor = lr_factor(self.config.schedule, step, self.config.total_epochs * self.steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = group["peak"] * factor
        return self.config.lr * factor

    # --- one phase, resumable -----------------------------------------------------------------
    def _ckpt(self, phase: Phase) -> Path:
        return self.out / phase.run / f"{phase.name}.ckpt"

    def kept(self, run: str, name: str, epoch: int) -> Path:
        """The checkpoint of phase ``name`` of ``run`` after ``epoch`` epochs of the schedule (``Phase.keep``)."""
        return self.out / run / f"{name}.after{epoch}.ckpt"

    def _data_parallel(self, model):
        """What the training step calls: ``model`` itself, or a DDP wrapper of it on several ranks."""
        if self.world == 1:
            return model
        if self.config.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _sync_buffers(self, model) -> None:
        """Rank 0's BN statistics on every rank after an epoch (each rank's last steps updated its own):
        evaluation, checkpoints and the split then see one model."""
        if self.world > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def fit(self, model, phase: Phase):
        """Train ``model`` through the phase's epochs of the schedule, resuming from its checkpoint when asked."""
        if self.is_main:
            (self.out / phase.run).mkdir(exist_ok=True)
        optimizer = self._optimizer(model, phase)
        trained = self._data_parallel(model)
        start = 0
        path = self._ckpt(phase)
        if self.config.resume and path.exists():
            state = torch.load(path, map_location=self.device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            self.gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])  # dropout masks continue as if never stopped
            phase.history = state["history"]
            start = state["epoch"] + 1
        groups = blocks.hard_ids(model) if self.has_groups(model) else None
        for epoch in range(start, phase.epochs):
            began = time.perf_counter()
            row = {"run": phase.run, "phase": phase.name, "epoch": phase.first_epoch + epoch}
            row.update(self._train_epoch(trained, model, optimizer, phase, phase.first_epoch + epoch))
            self._sync_buffers(model)
            row["test_acc"] = self.evaluate(model)
            if groups is not None and self.data.has_coarse:
                row["nmi_coarse"] = self.nmi(model)
            fractions = {}
            if groups is not None:
                fractions, groups = self._block_columns(model, groups, row)
            row["seconds"] = time.perf_counter() - began
            phase.history.append(row)
            if self.is_main:
                self._log(row)
                self._log_blocks(row, fractions)
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                            "history": phase.history}, path)
                if phase.first_epoch + epoch + 1 in phase.keep:
                    shutil.copyfile(path, self.kept(phase.run, phase.name, phase.first_epoch + epoch + 1))
            _barrier(self.world)  # a rank killed now resumes from a checkpoint every rank has passed
        return model

    @staticmethod
    def has_groups(model) -> bool:
        """Whether ``model`` is split-aware (has assignments and a plan), so its block structure is logged."""
        return hasattr(model, "assignments") and getattr(model, "split_plan", None) is not None

    def _block_columns(self, model, before: dict, row: dict) -> tuple[dict[str, float], dict]:
        """Fill ``row``'s ``off_block`` (mean over split layers), ``classes_moved`` and ``features_moved``
        (hard groups changed since ``before``, a :func:`blocks.hard_ids`); returns the per-layer fractions
        and the groups now."""
        fractions = blocks.off_block_fractions(model)
        now = blocks.hard_ids(model)
        row["off_block"] = blocks.mean_fraction(fractions)
        row["classes_moved"], row["features_moved"] = blocks.moved(before, now, model.split_plan.output_key)
        return fractions, now

    def _train_batches(self, generator, sharded: bool = True):
        shard = (self.rank, self.world) if sharded else (0, 1)
        return self.data.train_batches(self.config.batch_size, generator, self.device, shard=shard)

    def _train_epoch(self, trained, model, optimizer, phase: Phase, epoch: int) -> dict:
        """One epoch of ``trained`` (``model`` or its DDP wrapper); returns the log row's training part:
        lr at the last step, epoch means of the cross-entropy, of each unweighted regulariser (when the
        phase has them) and of the objective (means over this rank's shard)."""
        trained.train()
        names = ("train_ce", *(t.lower() for t in REG_TERMS)) if phase.regularize else ("train_ce",)
        sums, count, lr = torch.zeros(len(names) + 1, device=self.device), 0, self.config.lr
        bar = tqdm(self._train_batches(self.gen), total=self.steps_per_epoch,
                   desc=f"{phase.run}/{phase.name} epoch {epoch + 1}/{self.config.total_epochs}",
                   leave=False, disable=not self.config.progress)
        for i, (images, labels) in enumerate(bar):
            lr = self.set_lr(optimizer, epoch * self.steps_per_epoch + i)
            if phase.anneal is not None:
                phase.anneal.at_step(epoch * self.steps_per_epoch + i)
            with self.autocast():
                ce = F.cross_entropy(trained(images), labels)
            parts = [ce]
            loss = ce
            if phase.regularize:
                terms = convert.regularization_terms(model)
                parts += [terms[t] for t in REG_TERMS]
                loss = ce + convert.weigh_terms(terms, self.config.gammas)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([*parts, loss]).detach().float() * len(labels)
            count += len(labels)
            if i % 20 == 0:  # .item() waits for the device: not every step
                bar.set_postfix(loss=f"{sums[-1].item() / count:.3f}", lr=f"{lr:.4f}")
        means = (sums / max(count, 1)).tolist()
        return {"lr": lr, **dict(zip(names, means[:-1])), "train_loss": means[-1]}

    @torch.no_grad()
    def evaluate(self, model) -> float:
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for images, labels in self.data.test_batches(256, self.device, shard=(self.rank, self.world)):
            with self.autocast():
                correct += (model(images).argmax(1) == labels).sum()
        if self.world > 1:
            torch.distributed.all_reduce(correct)
        return correct.item() / self.data.num_test

    def autocast(self):
        """Mixed precision for the forward (``precision``); the regularisers stay in fp32."""
        dtype = PRECISIONS[self.config.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def recalibrate(self, model):
        """BN running statistics from ``BN_RECALIBRATION_BATCHES`` training batches (own generator:
        the training stream is not disturbed)."""
        gen = torch.Generator().manual_seed(self.config.seed + 1)
        # the same batches on every rank: the statistics stay identical across ranks
        images = (x for _, (x, _) in zip(range(BN_RECALIBRATION_BATCHES), self._train_batches(gen, sharded=False)))
        return convert.recalibrate_batchnorm(model, images, self.autocast)

    def nmi(self, model) -> float:
        plan = model.split_plan
        classes = convert.hard_groups(model, plan.output_key, plan.levels[-1]).cpu()
        return grouping.nmi(classes.numpy(), self.data.fine_to_coarse)

    def _log(self, row: dict) -> None:
        if self.config.progress:
            tqdm.write(epoch_line(row, self.config.total_epochs))
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            step = f"{row['run']}/{row['phase']}"
            for key in LOG_FIELDS[3:]:
                if key in row:
                    self.writer.add_scalar(f"{step}/{key}", row[key], row["epoch"])
            self.writer.flush()

    def _log_blocks(self, row: dict, fractions: dict[str, float]) -> None:
        """One ``off_block.csv`` line per split layer: its off-block energy fraction after the epoch."""
        if not fractions:
            return
        path = self.out / "off_block.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=BLOCK_FIELDS)
            if new:
                writer.writeheader()
            for layer, value in fractions.items():
                writer.writerow({"run": row["run"], "phase": row["phase"], "epoch": row["epoch"], "layer": layer,
                                 "off_block_fraction": value})

    # --- runs -----------------------------------------------------------------------------------
    def starting_model(self):
        """The dense model every arm branches from at epoch ``warmup_epochs``: warmed up, or ``init_from``."""
        if self.start_model is not None:
            return self.to_device(self.start_model)
        model = self.build(split=False)
        if self.config.warmup_epochs:
            self.fit(model, Phase("warmup", "train", 0, self.config.warmup_epochs))
        return model

    def split_and_finish(self, run: str, model) -> dict:
        """Hard split of ``model`` at epoch ``stage1_epochs``, BN recalibration, stage 2; returns the arm's results."""
        c = self.config
        before = self.evaluate(model)
        fractions = blocks.off_block_fractions(model)
        split_model = self.recalibrate(self.to_device(convert.split(model)))
        at_split = self.evaluate(split_model)
        if c.stage2_epochs:
            self.fit(split_model, Phase(run, "stage2", c.stage1_epochs, c.stage2_epochs))
        result = self.summary(model, split_model)
        result.update(test_acc_before_split=before, test_acc_at_split=at_split, off_block_fraction=fractions)
        return result | {"split_model": split_model}

    def anneal(self, run: str, model) -> dict:
        """The last ``anneal_epochs`` of stage 1 for a split-aware ``model`` whose groups stay as they are:
        the forward uses ``W * (B + lam (1 - B))``, ``lam`` 1 -> 0 per step (:class:`blocks.BlockAnneal`), no
        regulariser, then the weights are left at ``W * B``. Returns the accuracy and the per-layer
        off-block fractions where it starts (``test_acc_anneal_start``, ``off_block_fraction_anneal_start``)."""
        c = self.config
        first = c.stage1_epochs - c.anneal_epochs
        start = {"test_acc_anneal_start": self.evaluate(model),
                 "off_block_fraction_anneal_start": blocks.off_block_fractions(model)}
        anneal = blocks.BlockAnneal(model, first * self.steps_per_epoch, c.anneal_epochs * self.steps_per_epoch,
                                    c.anneal_shape)
        self.fit(model, Phase(run, "anneal", first, c.anneal_epochs, anneal=anneal))
        anneal.finish()
        return start

    def run_splitnet(self, start) -> dict:
        c = self.config
        model = self.split_aware(start)
        if (c.warmup_epochs or c.init_from) and c.assign_init != "random":
            groups = grouping.cluster_groups(model, c.seed, balanced=c.assign_init == "balanced")
            grouping.apply_groups(model, groups, c.assign_confidence)
        learning = c.stage1_epochs - c.warmup_epochs - c.anneal_epochs
        if learning:
            self.fit(model, Phase("splitnet", "stage1", c.warmup_epochs, learning, regularize=True,
                                  learn_assignments=True))
        annealed = self.anneal("splitnet", model) if c.anneal_epochs else {}
        if self.is_main:
            torch.save({"config": dataclasses.asdict(c), "state_dict": model.state_dict()}, self.out / "stage1.pt")
        result = self.split_and_finish("splitnet", model) | annealed
        if self.is_main:
            io.save(result["split_model"], self.out / "split.pt", input_shape=self.input_shape)
        return result | {"stage1_model": model}

    def dense_at_split(self, start):
        """The ``dense`` arm at epoch ``stage1_epochs``, where the split arms split (trained once, then cached)."""
        if self._dense_at_split is None:
            c = self.config
            model = self.build(split=False)
            model.load_state_dict(start.state_dict())
            keep = (c.stage1_epochs - c.anneal_epochs,) if c.anneal_epochs else ()
            self._dense_at_split = self.fit(model, Phase("dense", "stage1", c.warmup_epochs,
                                                         c.stage1_epochs - c.warmup_epochs, keep=keep))
        return self._dense_at_split

    def dense_at(self, start, epoch: int):
        """The ``dense`` arm after ``epoch`` epochs, ``warmup_epochs <= epoch <= stage1_epochs`` (an epoch before
        the split must be ``stage1_epochs - anneal_epochs``, the one whose checkpoint the arm keeps)."""
        c = self.config
        if epoch == c.stage1_epochs:
            return self.dense_at_split(start)
        model = self.build(split=False)
        model.load_state_dict(start.state_dict())
        if epoch == c.warmup_epochs:
            return model
        self.dense_at_split(start)
        _barrier(self.world)
        state = torch.load(self.kept("dense", "stage1", epoch), map_location=self.device, weights_only=False)
        model.load_state_dict(state["model"])
        return model

    def run_baseline(self, name: str, start, split_params: int) -> dict:
        c = self.config
        if name == "dense":
            model = copy.deepcopy(self.dense_at_split(start))
            if c.stage2_epochs:
                self.fit(model, Phase("dense", "stage2", c.stage1_epochs, c.stage2_epochs))
            if self.is_main:
                io.save(model, self.out / "dense" / "dense.pt", input_shape=self.input_shape)
            return {"test_acc": self.evaluate(model), "params": convert.count_parameters(model)}
        if name == "thin":
            torch.manual_seed(c.seed)
            model = self.to_device(models.thin(c.model, self.data.num_classes, split_params, dropout=c.dropout))
            self.fit(model, Phase("thin", "train", 0, c.total_epochs))
            return {"test_acc": self.evaluate(model), "params": convert.count_parameters(model),
                    "width": list(model.config.get("channels", ())) or model.config.get("hidden")}
        model = self.split_aware(self.dense_at(start, c.stage1_epochs - c.anneal_epochs))
        if name == "random":
            groups = {k: grouping.random_balanced(a.features, a.groups, c.seed) for k, a in model.assignments.items()}
        else:
            groups = grouping.cluster_groups(model, c.seed, balanced=c.assign_init == "balanced")
        grouping.apply_groups(model, groups)
        annealed = self.anneal(name, model) if c.anneal_epochs else {}
        result = self.split_and_finish(name, model) | annealed
        del result["split_model"]
        return result

    def summary(self, model, split_model) -> dict:
        result = {"test_acc": self.evaluate(split_model), "params": convert.count_parameters(split_model),
                  "group_sizes": convert.group_sizes(model), "empty_groups": convert.empty_groups(model)}
        if result["empty_groups"]:
            warnings.warn(f"the split left empty groups {result['empty_groups']}: those subnetworks have no "
                          "channels there (an empty stage or logits input leaves its classes only their biases; "
                          "see group_sizes in metrics.json)", stacklevel=2)
        if self.data.has_coarse:
            result["nmi_coarse"] = self.nmi(model)
        return result

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the data's images."""
        return self.data.input_shape

    def earlier_baselines(self) -> dict:
        """A resumed run's metrics.json baselines that this run does not train again (a run resumed with other
        ``baselines`` adds arms to its metrics instead of dropping the ones it has); {} otherwise."""
        path = self.out / "metrics.json"
        if not self.config.resume or not path.exists():
            return {}
        try:
            earlier = json.loads(path.read_text()).get("baselines") or {}
        except (OSError, ValueError, AttributeError):
            return {}
        return {name: arm for name, arm in earlier.items() if name not in self.config.baselines}

    def write_metrics(self, metrics: dict) -> None:
        if self.is_main:
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    def inference_ms(self, model, batch: int = 256) -> float:
        model.eval()
        x = torch.randn(batch, *self.input_shape, device=self.device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            model(x)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                model(x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        return 1e3 * sorted(times)[len(times) // 2]


MIN_INPUT_SIZE = {"tv-alexnet": 63}  # below it, torchvision AlexNet's features shrink the image to nothing


def check_input_size(model: str, input_shape: tuple[int, int, int]) -> None:
    """A ``ValueError`` when ``model`` cannot take the data's images."""
    smallest = MIN_INPUT_SIZE.get(model.lower())
    if smallest and min(input_shape[1:]) < smallest:
        raise ValueError(f"model: {model} needs images of at least {smallest}x{smallest}, the data has "
                         f"{input_shape[1]}x{input_shape[2]} (ImageFolder data: --image-size 224)")


def epoch_line(row: dict, total_epochs: int) -> str:
    """The line printed per epoch: run/phase, epoch, lr, CE, the regularisers, accuracy, NMI, seconds."""
    parts = [f"{row['run']}/{row['phase']:<6}", f"epoch {row['epoch'] + 1:>3}/{total_epochs}", f"lr {row['lr']:.4f}",
             f"CE {row['train_ce']:.3f}"]
    parts += [f"{term} {row[term.lower()]:.4f}" for term in REG_TERMS if term.lower() in row]
    parts.append(f"test {100 * row['test_acc']:.2f}%")
    if "nmi_coarse" in row:
        parts.append(f"NMI {row['nmi_coarse']:.3f}")
    if "off_block" in row:
        parts.append(f"off-block {row['off_block']:.4f}  moved {row['classes_moved']} classes "
                     f"{row['features_moved']} features")
    parts.append(f"{row['seconds']:.1f} s")
    return "  ".join(parts)


def check_out(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """Refuse to mix two runs in ``out``: a folder holding a run needs ``resume`` (continue it) or
    ``overwrite`` (delete that run's files, and only those). Returns the run's files found there."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    existing = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if existing and not resume and not overwrite:
        raise ValueError(f"out: {out} already holds a run ({', '.join(existing)}): continue it with --resume "
                         "(resume=True), replace it with --overwrite (overwrite=True), or choose another --out")
    return existing


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """:func:`check_out`, then with ``overwrite`` delete the run found there."""
    existing = check_out(out, resume, overwrite)
    if resume or not overwrite:
        return
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def dense_state(model) -> dict:
    """``model``'s weights without its group assignments (loads into the ``split=None`` model)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("assignments.")}


def load_dense_weights(model, state: dict, source: str):
    """``model`` (split-aware) with a dense ``state`` loaded: everything but the assignments must match."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("assignments.") for key in missing):
        raise ValueError(f"{source} does not fit this split-aware model: missing {missing}, unexpected {unexpected}")
    return model


def load_init(path, model_name: str, num_classes: int):
    """The dense model saved at ``path`` by :func:`splitkern.save`, checked against the run's model and classes."""
    if not Path(path).is_file():
        raise ValueError(f"init_from: {path} is not a file (a dense model saved by splitkern.save, e.g. the "
                         "dense baseline's dense/dense.pt)")
    try:
        model = io.load(path)
    except ValueError as exc:
        raise ValueError(f"init_from: {exc}") from None
    if is_split(model):
        raise ValueError(f"init_from: {path} holds a split model; give a dense one (e.g. dense/dense.pt)")
    if model.config.get("num_classes") != num_classes:
        raise ValueError(f"init_from: {path} has {model.config.get('num_classes')} classes, the data has {num_classes}")
    expected = models.build(model_name, num_classes)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    if type(model) is not type(expected) or shapes != {k: v.shape for k, v in expected.state_dict().items()}:
        raise ValueError(f"init_from: {path} holds a {type(model).__name__} {model.config} that is not "
                         f"model={model_name!r}")
    return model


def train(config: TrainConfig | None = None, *, dataset: sk_data.ImageDataset | None = None, **options) -> dict:
    """Train SplitNet and its baselines (``splitkern.train``): ``config`` (default ``TrainConfig()``)
    with ``options`` replacing its fields, e.g. ``splitkern.train(data="synthetic", split="2-2",
    stage1_epochs=6, stage2_epochs=3, out="runs/x")``. Returns what ``metrics.json`` holds."""
    config = dataclasses.replace(config if config is not None else TrainConfig(), **options)
    return run(config, dataset)


def run(config: TrainConfig, dataset: sk_data.ImageDataset | None = None) -> dict:
    """Train SplitNet and the requested baselines; write and return ``metrics.json``'s content.

    ``dataset`` overrides ``config.data`` (tests pass a tiny one).
    """
    with process_group(config.device):
        return _run(Trainer(config, dataset))


def _run(trainer: Trainer) -> dict:
    config = trainer.config
    start = trainer.starting_model()
    main = trainer.run_splitnet(start)
    stage1, split_model = main.pop("stage1_model"), main.pop("split_model")
    top = stage1.split_plan.levels[-1]
    class_ids = convert.hard_groups(stage1, stage1.split_plan.output_key, top)
    names = trainer.data.fine_names
    dense_model = models.build(config.model, trainer.data.num_classes)
    metrics = {
        "spec": config.split, "model": config.model, "data": config.data,
        "test_acc": main["test_acc"],
        "test_acc_before_split": main["test_acc_before_split"],
        "test_acc_at_split": main["test_acc_at_split"],
        **{key: main[key] for key in ANNEAL_KEYS if key in main},
        "off_block_fraction": main["off_block_fraction"],
        "params_dense": convert.count_parameters(dense_model),
        "params_split": main["params"],
        "group_sizes": main["group_sizes"],
        "empty_groups": main["empty_groups"],
        "groups": [[names[i] for i in torch.nonzero(class_ids == g).flatten().tolist()]
                   for g in range(stage1.split_plan.groups(top))],
        "inference_ms_dense_b256": trainer.inference_ms(trainer.to_device(dense_model)),
        "inference_ms_split_b256": trainer.inference_ms(trainer.to_device(split_model)),
        "baselines": trainer.earlier_baselines(),
        "config": dataclasses.asdict(config),
    }
    if "nmi_coarse" in main:
        metrics["nmi_coarse"] = main["nmi_coarse"]
        metrics["coarse_of_groups"] = [sorted({trainer.data.coarse_names[trainer.data.fine_to_coarse[i]]
                                               for i in torch.nonzero(class_ids == g).flatten().tolist()})
                                       for g in range(len(metrics["groups"]))] if trainer.data.coarse_names else []
    trainer.write_metrics(metrics)
    for name in config.baselines:  # metrics.json is rewritten after each, so a long run reports as it goes
        metrics["baselines"][name] = trainer.run_baseline(name, start, main["params"])
        trainer.write_metrics(metrics)
    if trainer.writer is not None:
        trainer.writer.close()
    return metrics


def _rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()

