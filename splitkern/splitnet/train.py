"""SplitNet end to end: stage 1 (dense + assignments + regularisers), split, stage 2 (fine-tune).

:func:`run` trains the main model and the requested baselines into ``out``:

* ``splitnet``: ``warmup_epochs`` dense epochs; assignments initialised from a clustering of
  the classes' FC rows propagated down the tree (``assign_init="cluster"``) or left at their
  N(0, 0.01^2) init (``"random"``); the remaining stage-1 epochs learn weights and
  assignments with ``CE + regularization``; then the hard split and ``stage2_epochs`` of
  fine-tuning. The assignment logits get their own learning rate (``assign_lr``): at the
  network's rate they barely move in a short run (DESIGN.md §1).
* baselines on the same budget: ``dense`` (the warm-up continued unsplit), ``random`` (random balanced groups
  after the warm-up), ``cluster`` (clustering groups after the warm-up, no learning).

Every epoch writes a checkpoint; ``resume=True`` continues a killed run where it stopped.
Results: ``metrics.json``, ``log.csv``, TensorBoard events, ``split.pt`` (for
:func:`splitkern.load`) and ``stage1.pt`` (for ``splitkern plot``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from splitkern import data as sk_data
from splitkern import models
from splitkern.splitnet import convert, grouping, io

BASELINES = ("dense", "random", "cluster")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    data: str = "synthetic"
    model: str = "wrn10-2"
    split: str = "4"
    stage1_epochs: int = 6
    stage2_epochs: int = 2
    warmup_epochs: int = 2
    batch_size: int = 128
    lr: float = 0.1
    assign_lr: float = 10.0
    weight_decay: float = 5e-4
    gammas: tuple[float, float, float] = convert.DEFAULT_GAMMAS
    assign_init: str = "cluster"
    assign_confidence: float = 1.0
    precision: str = "fp32"
    baselines: tuple[str, ...] = ()
    device: str = "cpu"
    seed: int = 0
    out: str = "runs/splitnet"
    resume: bool = False
    tensorboard: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.stage1_epochs < 1 or self.stage2_epochs < 0:
            raise ValueError("stage1_epochs must be >= 1 and stage2_epochs >= 0")
        if not 0 <= self.warmup_epochs < self.stage1_epochs:
            raise ValueError(f"warmup_epochs must be in [0, stage1_epochs), got {self.warmup_epochs}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.assign_confidence <= 0:
            raise ValueError(f"assign_confidence must be > 0, got {self.assign_confidence}")
        gammas = tuple(self.gammas)
        if len(gammas) != 3 or not all(isinstance(g, (int, float)) and 0 <= g < math.inf for g in gammas):
            raise ValueError(f"gammas must be three finite numbers >= 0 (R_D, R_W, R_E), got {self.gammas!r}")
        if self.assign_init not in ("cluster", "random"):
            raise ValueError(f"assign_init must be 'cluster' or 'random', got {self.assign_init!r}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        if self.model.lower() != "alexnet":
            models.parse_model_name(self.model)


@dataclass
class Phase:
    """One training phase of one run, checkpointed per epoch."""

    run: str
    name: str
    epochs: int
    lr: float
    regularize: bool = False
    learn_assignments: bool = False
    history: list = field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainConfig, dataset: sk_data.ImageDataset | None = None):
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(config.device)
        self.data = dataset if dataset is not None else sk_data.load(config.data)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.log_path = self.out / "log.csv"
        self.writer = self._writer() if config.tensorboard else None

    def _writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError("TensorBoard logging needs the 'tensorboard' package "
                               "(pip install tensorboard), or pass --no-tensorboard") from exc
        return SummaryWriter(str(self.out / "tensorboard"))

    # --- models -------------------------------------------------------------------------------
    def build(self, split=True):
        torch.manual_seed(self.config.seed)
        model = models.build(self.config.model, self.data.num_classes, self.config.split if split else None)
        return model.to(self.device, memory_format=torch.channels_last)

    def _optimizer(self, model, phase: Phase):
        assignment_ids = {id(p) for p in model.assignments.parameters()} if hasattr(model, "assignments") else set()
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in assignment_ids]
        groups = [{"params": weights, "lr": phase.lr, "weight_decay": self.config.weight_decay}]
        if assignment_ids and phase.learn_assignments:
            groups.append({"params": list(model.assignments.parameters()), "lr": self.config.assign_lr,
                           "weight_decay": 0.0})
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)

    # --- one phase, resumable -----------------------------------------------------------------
    def _ckpt(self, phase: Phase) -> Path:
        return self.out / phase.run / f"{phase.name}.ckpt"

    def fit(self, model, phase: Phase):
        """Train ``model`` for the phase (cosine lr), resuming from its checkpoint when asked."""
        (self.out / phase.run).mkdir(exist_ok=True)
        optimizer = self._optimizer(model, phase)
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
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        for epoch in range(start, phase.epochs):
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * epoch / phase.epochs))
            train_loss = self._train_epoch(model, optimizer, phase, epoch)
            acc = self.evaluate(model)
            row = {"run": phase.run, "phase": phase.name, "epoch": epoch, "train_loss": train_loss, "test_acc": acc}
            if hasattr(model, "assignments") and model.split_plan is not None and self.data.has_coarse:
                row["nmi_coarse"] = self.nmi(model)
            phase.history.append(row)
            self._log(row)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                        "history": phase.history}, path)
        return model

    def _train_epoch(self, model, optimizer, phase: Phase, epoch: int) -> float:
        model.train()
        d = self.data
        total, count = 0.0, 0
        steps = math.ceil(len(d.y_train) / self.config.batch_size)
        batches = sk_data.batches(d.x_train, d.y_train, self.config.batch_size, mean=d.mean, std=d.std,
                                  train=True, generator=self.gen, device=self.device)
        bar = tqdm(batches, total=steps, desc=f"{phase.run}/{phase.name} {epoch + 1}/{phase.epochs}",
                   leave=False, disable=not self.config.progress)
        for images, labels in bar:
            with self.autocast():
                loss = F.cross_entropy(model(images), labels)
            if phase.regularize:
                loss = loss + convert.regularization(model, self.config.gammas)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{total / count:.3f}")
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, model) -> float:
        model.eval()
        d = self.data
        correct = 0
        for images, labels in sk_data.batches(d.x_test, d.y_test, 256, mean=d.mean, std=d.std, train=False,
                                              device=self.device):
            with self.autocast():
                correct += (model(images).argmax(1) == labels).sum().item()
        return correct / len(d.y_test)

    def autocast(self):
        """Mixed precision for the forward (``precision``); the regularisers stay in fp32."""
        dtype = PRECISIONS[self.config.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def nmi(self, model) -> float:
        plan = model.split_plan
        classes = convert.hard_groups(model, plan.output_key, plan.levels[-1]).cpu()
        return grouping.nmi(classes.numpy(), self.data.fine_to_coarse)

    def _log(self, row: dict) -> None:
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["run", "phase", "epoch", "train_loss", "test_acc", "nmi_coarse"])
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            step = f"{row['run']}/{row['phase']}"
            for key in ("train_loss", "test_acc", "nmi_coarse"):
                if key in row:
                    self.writer.add_scalar(f"{step}/{key}", row[key], row["epoch"])
            self.writer.flush()

    # --- runs -----------------------------------------------------------------------------------
    def warmed_up(self):
        model = self.build()
        if self.config.warmup_epochs:
            self.fit(model, Phase("splitnet", "warmup", self.config.warmup_epochs, self.config.lr))
        return model

    def finish_split(self, run: str, model, epochs: int, lr: float):
        split_model = convert.split(model).to(self.device, memory_format=torch.channels_last)
        if epochs:
            self.fit(split_model, Phase(run, "stage2", epochs, lr))
        return split_model

    def run_splitnet(self, warm):
        c = self.config
        model = copy.deepcopy(warm)
        if c.warmup_epochs and c.assign_init == "cluster":
            grouping.apply_groups(model, grouping.cluster_groups(model, c.seed), c.assign_confidence)
        stage1 = Phase("splitnet", "stage1", c.stage1_epochs - c.warmup_epochs, c.lr, regularize=True,
                       learn_assignments=True)
        self.fit(model, stage1)
        torch.save({"config": dataclasses.asdict(c), "state_dict": model.state_dict()}, self.out / "stage1.pt")
        split_model = self.finish_split("splitnet", model, c.stage2_epochs, c.lr * 0.1)
        io.save(split_model, self.out / "split.pt")
        return self.summary(model, split_model)

    def run_baseline(self, name: str, warm):
        c = self.config
        epochs = c.stage1_epochs - c.warmup_epochs + c.stage2_epochs
        if name == "dense":  # continues the shared warm-up, so its schedule is the main run's
            model = self.build(split=False)
            model.load_state_dict(dense_state(warm))
            model = self.fit(model, Phase("dense", "train", epochs, c.lr))
            return {"test_acc": self.evaluate(model), "params": convert.count_parameters(model)}
        model = copy.deepcopy(warm)
        if name == "random":
            groups = {k: grouping.random_balanced(a.features, a.groups, c.seed) for k, a in model.assignments.items()}
        else:
            groups = grouping.cluster_groups(model, c.seed)
        grouping.apply_groups(model, groups)
        split_model = self.finish_split(name, model, epochs, c.lr * 0.1)
        return self.summary(model, split_model)

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

    def inference_ms(self, model, batch: int = 256) -> float:
        model.eval()
        x = torch.randn(batch, 3, 32, 32, device=self.device).contiguous(memory_format=torch.channels_last)
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


def dense_state(model) -> dict:
    """``model``'s weights without its group assignments (loads into the ``split=None`` model)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("assignments.")}


def run(config: TrainConfig, dataset: sk_data.ImageDataset | None = None) -> dict:
    """Train SplitNet and the requested baselines; write and return ``metrics.json``'s content.

    ``dataset`` overrides ``config.data`` (tests pass a tiny one).
    """
    trainer = Trainer(config, dataset)
    warm = trainer.warmed_up()
    main = trainer.run_splitnet(warm)
    stage1 = models.build(config.model, trainer.data.num_classes, config.split)
    stage1.load_state_dict(torch.load(trainer.out / "stage1.pt", weights_only=False)["state_dict"])
    split_model = io.load(trainer.out / "split.pt")
    top = stage1.split_plan.levels[-1]
    class_ids = convert.hard_groups(stage1, stage1.split_plan.output_key, top)
    names = trainer.data.fine_names
    metrics = {
        "spec": config.split, "model": config.model, "data": config.data,
        "test_acc": main["test_acc"],
        "params_dense": convert.count_parameters(models.build(config.model, trainer.data.num_classes)),
        "params_split": main["params"],
        "group_sizes": main["group_sizes"],
        "empty_groups": main["empty_groups"],
        "groups": [[names[i] for i in torch.nonzero(class_ids == g).flatten().tolist()]
                   for g in range(stage1.split_plan.groups(top))],
        "inference_ms_dense_b256": trainer.inference_ms(stage1.to(trainer.device)),
        "inference_ms_split_b256": trainer.inference_ms(split_model.to(trainer.device)),
        "baselines": {},
        "config": dataclasses.asdict(config),
    }
    if "nmi_coarse" in main:
        metrics["nmi_coarse"] = main["nmi_coarse"]
        metrics["coarse_of_groups"] = [sorted({trainer.data.coarse_names[trainer.data.fine_to_coarse[i]]
                                               for i in torch.nonzero(class_ids == g).flatten().tolist()})
                                       for g in range(len(metrics["groups"]))] if trainer.data.coarse_names else []
    metrics_path = trainer.out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2))
    for name in config.baselines:  # metrics.json is rewritten after each, so a long run reports as it goes
        metrics["baselines"][name] = trainer.run_baseline(name, warm)
        metrics_path.write_text(json.dumps(metrics, indent=2))
    if trainer.writer is not None:
        trainer.writer.close()
    return metrics
