"""Dataset readers and the batch pipeline (see :mod:`splitkern.data`)."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR_STD = (0.2673, 0.2564, 0.2762)


class ClassNames:
    """What a dataset says about its classes: ``fine_names``, and superclasses when ``fine_to_coarse``
    gives one per class (``coarse_names`` names them)."""

    fine_names: list[str]
    fine_to_coarse: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.fine_names)

    @property
    def has_coarse(self) -> bool:
        return len(self.fine_to_coarse) == self.num_classes


@dataclass
class ImageDataset(ClassNames):
    """Train and test splits held in memory: ``x_*`` uint8 (N, H, W, 3), ``y_*`` int64 fine labels.

    What the trainer and ``splitkern infer`` read of any dataset (also :class:`ImageFolderData`):
    ``num_classes``, ``fine_names``, ``has_coarse``/``coarse_names``/``fine_to_coarse`` (superclasses,
    for the NMI report), ``num_train``, ``num_test``, ``input_shape`` and the two batch streams
    :meth:`train_batches` and :meth:`test_batches`.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fine_names: list[str]
    coarse_names: list[str] = field(default_factory=list)
    fine_to_coarse: list[int] = field(default_factory=list)
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        return len(self.y_test)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        _, height, width, channels = self.x_test.shape
        return channels, height, width

    def train_batches(self, batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu",
                      shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled, augmented epoch (order and augmentation drawn from ``generator``); ``shard``
        ``(rank, world)`` takes this rank's part of it (:func:`shard_indices`)."""
        return batches(self.x_train, self.y_train, batch_size, mean=self.mean, std=self.std, train=True,
                       generator=generator, device=device, shard=shard)

    def test_batches(self, batch_size: int, device: str | torch.device = "cpu",
                     shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test split in order, normalised, not augmented; ``shard`` ``(rank, world)``: every
        ``world``-th image from ``rank`` (no padding: the shards add up to the test set once)."""
        return batches(self.x_test, self.y_test, batch_size, mean=self.mean, std=self.std, train=False,
                       device=device, shard=shard)


def _check_arrays(path, x, y_fine, y_coarse, num_fine, num_coarse):
    if x.ndim != 4 or x.shape[3] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{path}: 'x' must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    for name, y, limit in (("y_fine", y_fine, num_fine), ("y_coarse", y_coarse, num_coarse)):
        if y is None:
            continue
        if y.shape != (x.shape[0],):
            raise ValueError(f"{path}: '{name}' must have shape ({x.shape[0]},), got {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= limit):
            raise ValueError(f"{path}: '{name}' has labels outside [0, {limit})")


def _read_npz(path: Path, num_fine: int, num_coarse: int):
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"x", "y_fine"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: missing keys {sorted(missing)} (has {sorted(data.files)})")
            x, y_fine = data["x"], data["y_fine"].astype(np.int64)
            y_coarse = data["y_coarse"].astype(np.int64) if "y_coarse" in data.files else None
    except (OSError, EOFError) as exc:  # unreadable, truncated or not an npz
        raise ValueError(f"{path}: cannot read npz ({exc})") from exc
    _check_arrays(path, x, y_fine, y_coarse, num_fine, num_coarse)
    return x, y_fine


def load_npz_folder(folder: str | os.PathLike) -> ImageDataset:
    """A folder of ``train*.npz`` shards + ``test.npz`` (+ optional ``meta.json``), as in shared/data/cifar100."""
    folder = Path(folder)
    shards = sorted(folder.glob("train*.npz"))
    test = folder / "test.npz"
    if not shards or not test.exists():
        raise ValueError(f"{folder}: expected train*.npz shards and test.npz")
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    fine_names = meta.get("fine_names") or [str(i) for i in range(100)]
    coarse_names = meta.get("coarse_names", [])
    parts = [_read_npz(p, len(fine_names), max(1, len(coarse_names) or 100)) for p in shards]
    x_test, y_test = _read_npz(test, len(fine_names), max(1, len(coarse_names) or 100))
    return ImageDataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                        x_test, y_test, list(fine_names), list(coarse_names), list(meta.get("fine_to_coarse", [])))


def load_cifar_python(folder: str | os.PathLike) -> ImageDataset:
    """torchvision's ``cifar-100-python`` folder (files ``train``, ``test``, ``meta``)."""
    folder = Path(folder)

    def read(name):
        path = folder / name
        try:
            with path.open("rb") as f:
                return pickle.load(f, encoding="latin1"), path
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"{path}: cannot read cifar-100-python file ({exc})") from exc

    meta, _ = read("meta")
    splits = []
    for name in ("train", "test"):
        data, path = read(name)
        if not {"data", "fine_labels"} <= set(data):
            raise ValueError(f"{path}: missing keys 'data'/'fine_labels'")
        x = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        fine = np.asarray(data["fine_labels"], dtype=np.int64)
        coarse = np.asarray(data.get("coarse_labels", np.zeros_like(fine)), dtype=np.int64)
        _check_arrays(path, x, fine, coarse, 100, 20)
        splits.append((x, fine, coarse))
    (xt, yt, ct), (xs, ys, _) = splits
    fine_to_coarse = [0] * 100
    for f, c in zip(yt, ct):
        fine_to_coarse[f] = int(c)
    return ImageDataset(xt, yt, xs, ys, list(meta["fine_label_names"]), list(meta.get("coarse_label_names", [])),
                        fine_to_coarse)


def synthetic_hierarchy(seed: int = 0, coarse: int = 4, fine_per_coarse: int = 4, train_per_class: int = 200,
                        test_per_class: int = 50, size: int = 32) -> ImageDataset:
    """A built-in hierarchical image set (no download), deterministic from ``seed``.

    Each superclass has a colour and a low-frequency pattern; each fine class adds its
    own stripe orientation and frequency on top; images get random shifts and noise.
    Classes of one superclass look alike, so a good split groups them together.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    classes = coarse * fine_per_coarse
    coarse_colour = rng.uniform(0.2, 0.8, (coarse, 3))
    coarse_freq = rng.uniform(1, 3, (coarse, 2))
    fine_angle = rng.uniform(0, np.pi, classes)
    fine_freq = rng.uniform(3, 8, classes)

    def render(label, n):
        c = label // fine_per_coarse
        shift = rng.uniform(0, 1, (n, 2, 1, 1))
        base = np.sin(2 * np.pi * (coarse_freq[c, 0] * (xx + shift[:, 0]) + coarse_freq[c, 1] * (yy + shift[:, 1])))
        stripes = np.sin(2 * np.pi * fine_freq[label] * (np.cos(fine_angle[label]) * (xx + shift[:, 0])
                                                       + np.sin(fine_angle[label]) * (yy + shift[:, 1])))
        img = coarse_colour[c][None, None, None] + 0.25 * base[..., None] + 0.2 * stripes[..., None]
        img = img + rng.normal(0, 0.08, img.shape)
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)

    def build(per_class):
        xs = [render(label, per_class) for label in range(classes)]
        ys = np.repeat(np.arange(classes), per_class)
        order = rng.permutation(len(ys))
        return np.concatenate(xs)[order], ys[order]

    x_train, y_train = build(train_per_class)
    x_test, y_test = build(test_per_class)
    names = [f"c{c}_f{f}" for c in range(coarse) for f in range(fine_per_coarse)]
    mean = tuple(float(v) for v in x_train.reshape(-1, 3).mean(0) / 255)
    std = tuple(float(v) for v in x_train.reshape(-1, 3).std(0) / 255)
    return ImageDataset(x_train, y_train, x_test, y_test, names, [f"super{c}" for c in range(coarse)],
                        [f // fine_per_coarse for f in range(classes)], mean, std)


def load(source: str | os.PathLike, *, image_size: int | None = None, workers: int = 2):
    """``"synthetic"``, a folder of npz shards, a ``cifar-100-python`` folder (all held in memory:
    :class:`ImageDataset`), or an ImageFolder layout ``DIR/train/<class>/*``, ``DIR/val/<class>/*``
    (streamed by ``workers`` DataLoader processes at ``image_size``, default 224:
    :class:`~splitkern.data.image_folder.ImageFolderData`). ``image_size`` applies to image folders only."""
    if str(source) == "synthetic":
        data = synthetic_hierarchy()
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"data: {folder} is not a folder (give 'synthetic', an npz shard folder, "
                             "cifar-100-python or an ImageFolder layout with train/ and val/)")
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            from splitkern.data.image_folder import load_image_folder

            return load_image_folder(folder, image_size=image_size or 224, workers=workers)
        if (folder / "train").exists() and (folder / "meta").exists():
            data = load_cifar_python(folder)
        else:
            data = load_npz_folder(folder)
    if image_size is not None and image_size != data.input_shape[1]:
        raise ValueError(f"image_size: {source} holds {data.input_shape[1]}x{data.input_shape[2]} images; "
                         "image_size resizes ImageFolder data only")
    return data


def shard_indices(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s part of an epoch's ``order`` among ``world`` ranks, as ``DistributedSampler``
    takes it: padded with its first indices to a multiple of ``world``, then every ``world``-th."""
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank {rank} is not in [0, {world})")
    if world == 1:
        return order
    padded = torch.cat([order, order[:(-len(order)) % world]]) if len(order) else order
    return padded[rank::world]


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
            train: bool, generator: torch.Generator | None = None, device: str | torch.device = "cpu",
            shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)``: float NCHW (channels_last) normalised, with random crop (pad 4) and
    horizontal flip when ``train``. Shuffled when ``train``: the order and every image's crop and flip
    come from one seed drawn from ``generator``, so ranks that share a generator agree on the epoch
    and each takes its ``shard`` ``(rank, world)`` of it (:func:`shard_indices`)."""
    n = len(y)
    order, crops = torch.arange(n)[shard[0]::shard[1]], None
    if train:
        epoch = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        order = shard_indices(torch.randperm(n, generator=epoch), *shard)
        crops = _augment_params(n, epoch)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std).view(1, 3, 1, 1) * 255
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        images = torch.from_numpy(x[idx.numpy()]).permute(0, 3, 1, 2).float()
        if train:
            images = _augment(images, *(p[idx] for p in crops))
        images = ((images - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
        yield images.to(device), torch.from_numpy(y[idx.numpy()]).to(device)


def _augment_params(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: crop offsets ``dy``, ``dx`` in [0, 8] and a flip flag."""
    return (torch.randint(0, 9, (n,), generator=generator), torch.randint(0, 9, (n,), generator=generator),
            torch.rand(n, generator=generator) < 0.5)


def _augment(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, vectorised over the batch."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 3, h, w + 8)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 3, h, w)
    cropped = cropped.gather(3, cols)
    cropped[flip] = cropped[flip].flip(3)
    return cropped
