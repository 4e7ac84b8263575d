"""ImageFolder data: ``DIR/train/<class>/*.jpg|png...`` and ``DIR/val/<class>/...``, streamed from disk.

The layout of torchvision's ``ImageFolder`` (and of ImageNet as most people keep it). Images are
decoded by ``DataLoader`` worker processes and transformed as torchvision's reference ImageNet
recipe does: training ``RandomResizedCrop(image_size)`` + horizontal flip, evaluation resize to
``image_size * 256 / 224`` + center crop, both normalised with the ImageNet mean and std.
An optional ``DIR/superclasses.json`` (``{"class name": "superclass name", ...}``) turns on the
NMI report of the learned class groups.

Every epoch's order and augmentation follow from one seed drawn from the trainer's generator
(per-image seeds), so a resumed run sees the same images, whatever the number of workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from splitkern.data.datasets import ClassNames, shard_indices

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")


def is_image_folder(source) -> bool:
    """True when ``source`` is a folder with ``train/`` and ``val/`` sub-folders."""
    folder = Path(str(source))
    return all((folder / split).is_dir() for split in SPLITS)


def _transforms(train: bool, image_size: int):
    try:
        from torchvision import transforms
    except ImportError as exc:
        raise ImportError("ImageFolder data needs torchvision (pip install torchvision)") from exc
    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   *normalise])
    return transforms.Compose([transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                               *normalise])


def _class_names(split_dir: Path) -> list[str]:
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"data: {split_dir} has no class folders (expected {split_dir}/<class>/<image files>)")
    return names


def _samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image file, class by class, files sorted."""
    samples = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"data: class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(str(p), label) for p in files]
    return samples


def _superclasses(path: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """``(coarse_names, fine_to_coarse)`` from ``superclasses.json``; empty when there is none."""
    if not path.exists():
        return [], []
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"data: {path} is not readable JSON ({exc})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"data: {path} must map each class name to a superclass name")
    missing = [c for c in classes if c not in mapping]
    unknown = sorted(set(mapping) - set(classes))
    if missing or unknown:
        raise ValueError(f"data: {path} does not match the class folders: missing {missing[:5]}, "
                         f"unknown {unknown[:5]}")
    coarse_names = sorted(set(mapping.values()))
    return coarse_names, [coarse_names.index(mapping[c]) for c in classes]


class _Images(torch.utils.data.Dataset):
    """``(image tensor, label)`` for ``samples``; image ``i`` is transformed under seed ``seed + i``."""

    def __init__(self, samples: list[tuple[str, int]], transform, seed: int):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"data: {path} is not a readable image ({exc})") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + i)
            return self.transform(image), label


def _one_line(exc: Exception) -> str:
    """A worker's error without the traceback DataLoader wraps around it."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(exc):
        return lines[-1].split(": ", 1)[-1]
    return str(exc)


@dataclass
class ImageFolderData(ClassNames):
    """An ImageFolder dataset, read lazily; the interface of :class:`~splitkern.data.ImageDataset`."""

    root: Path
    fine_names: list[str]
    train_samples: list[tuple[str, int]]
    test_samples: list[tuple[str, int]]
    image_size: int = 224
    workers: int = 2
    coarse_names: list[str] = field(default_factory=list)
    fine_to_coarse: list[int] = field(default_factory=list)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def num_train(self) -> int:
        return len(self.train_samples)

    @property
    def num_test(self) -> int:
        return len(self.test_samples)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

    def _stream(self, samples, train: bool, batch_size: int, seed: int, device, shard=(0, 1)):
        order = torch.arange(len(samples))[shard[0]::shard[1]]
        if train:
            order = shard_indices(torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)), *shard)
        loader = torch.utils.data.DataLoader(
            _Images(samples, _transforms(train, self.image_size), seed), batch_size=batch_size,
            sampler=order.tolist(), num_workers=self.workers, pin_memory=torch.device(device).type == "cuda")
        try:
            for images, labels in loader:
                yield images.contiguous(memory_format=torch.channels_last).to(device), labels.to(device)
        except ValueError as exc:
            raise ValueError(_one_line(exc)) from exc

    def train_batches(self, batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu",
                      shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled, augmented epoch: float ``(B, 3, image_size, image_size)`` and int64 labels;
        ``shard`` ``(rank, world)`` takes this rank's part (:func:`~splitkern.data.datasets.shard_indices`)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return self._stream(self.train_samples, True, batch_size, seed, device, shard)

    def test_batches(self, batch_size: int, device: str | torch.device = "cpu",
                     shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``val`` split in order, resized and center-cropped; ``shard`` ``(rank, world)``: every
        ``world``-th image from ``rank``."""
        return self._stream(self.test_samples, False, batch_size, 0, device, shard)


def load_image_folder(root: str | os.PathLike, image_size: int = 224, workers: int = 2) -> ImageFolderData:
    """Index ``root/train`` and ``root/val`` (class folders must agree; none may be empty)."""
    root = Path(root)
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    train, val = (_class_names(root / split) for split in SPLITS)
    if train != val:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise ValueError(f"data: {root}/train and {root}/val have different classes (only in train: "
                         f"{only_train[:5]}, only in val: {only_val[:5]})")
    coarse_names, fine_to_coarse = _superclasses(root / "superclasses.json", train)
    return ImageFolderData(root, train, _samples(root / "train", train), _samples(root / "val", train),
                           image_size, workers, coarse_names, fine_to_coarse)
