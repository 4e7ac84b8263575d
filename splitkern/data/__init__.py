"""Datasets: CIFAR-100 (npz shards or torchvision's cifar-100-python) and a built-in synthetic hierarchy.

Every loader returns an :class:`ImageDataset`: uint8 NHWC images with fine and coarse
(superclass) labels and class names, held in memory; :func:`batches` turns it into
normalised, augmented NCHW float batches without per-sample Python work.
"""

from splitkern.data.datasets import (ImageDataset, batches, load, load_cifar_python, load_npz_folder,
                                     synthetic_hierarchy)

__all__ = ["ImageDataset", "batches", "load", "load_cifar_python", "load_npz_folder", "synthetic_hierarchy"]
