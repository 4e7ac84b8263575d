"""ImageFolder data (DIR/train/<class>/*, DIR/val/<class>/*): indexing, batches, errors, training on it."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402  (torchvision's dependency)

from splitkern import data  # noqa: E402
from splitkern.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, load_image_folder  # noqa: E402

CLASSES = ("apple", "bee", "car", "dog")
SUPER = {"apple": "thing", "bee": "animal", "car": "thing", "dog": "animal"}


def write_image_folder(root, train_per_class=4, val_per_class=2, size=40, classes=CLASSES):
    """PNG images whose colour depends on the class (so a model can learn them)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3)) + np.array([60 * label, 200 - 50 * label, 100])
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "imgs")


def test_index_names_sizes_and_superclasses(folder):
    plain = data.load(folder, image_size=32, workers=0)
    assert plain.fine_names == sorted(CLASSES) and plain.num_classes == 4
    assert (plain.num_train, plain.num_test, plain.input_shape) == (16, 8, (3, 32, 32))
    assert not plain.has_coarse
    (folder / "superclasses.json").write_text(json.dumps(SUPER))
    with_super = data.load(folder, image_size=32, workers=0)
    assert with_super.has_coarse and with_super.coarse_names == ["animal", "thing"]
    assert [with_super.coarse_names[c] for c in with_super.fine_to_coarse] == [SUPER[c] for c in sorted(CLASSES)]


def test_test_batches_are_the_val_images_resized_center_cropped_and_normalised(folder):
    dataset = data.load(folder, image_size=32, workers=0)
    batches = list(dataset.test_batches(3, "cpu"))
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [x.shape[0] for x, _ in batches] == [3, 3, 2] and batches[0][0].shape[1:] == (3, 32, 32)
    # expected by hand: resize 40 -> round(32 * 256 / 224) = 37, center crop 32, then (x / 255 - mean) / std
    image = Image.open(folder / "val" / "apple" / "0.png").convert("RGB").resize((37, 37), Image.BILINEAR)
    crop = torch.from_numpy(np.asarray(image)[2:34, 2:34].copy()).permute(2, 0, 1).float() / 255
    expected = (crop - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(batches[0][0][0], expected, atol=0.05, rtol=0)  # antialiasing differs slightly


def test_train_epochs_follow_the_generator_whatever_the_workers(folder):
    def epoch(workers, seed):
        dataset = load_image_folder(folder, image_size=24, workers=workers)
        return [(x.clone(), y.clone()) for x, y in dataset.train_batches(5, torch.Generator().manual_seed(seed))]

    first, again, two_workers, other = epoch(0, 1), epoch(0, 1), epoch(2, 1), epoch(0, 2)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted([0, 1, 2, 3] * 4)  # every image once
    for a, b in zip(first, again):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(first, two_workers):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(first, other))
    assert first[0][0].shape == (5, 3, 24, 24)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_named(folder, workers):
    broken = folder / "val" / "car" / "1.png"
    broken.write_bytes(b"not a png")
    dataset = data.load(folder, image_size=32, workers=workers)
    with pytest.raises(ValueError, match=r"car/1\.png is not a readable image") as info:
        list(dataset.test_batches(4, "cpu"))
    assert "Traceback" not in str(info.value)


def test_layout_errors_name_the_folder(tmp_path):
    empty = write_image_folder(tmp_path / "a")
    for image in (empty / "train" / "bee").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="train/bee holds no images"):
        data.load(empty)
    differ = write_image_folder(tmp_path / "b")
    (differ / "val" / "dog").rename(differ / "val" / "wolf")
    with pytest.raises(ValueError, match=r"different classes.*only in train: \['dog'\].*only in val: \['wolf'\]"):
        data.load(differ)
    wrong = write_image_folder(tmp_path / "c")
    (wrong / "superclasses.json").write_text(json.dumps({"apple": "thing"}))
    with pytest.raises(ValueError, match="superclasses.json does not match.*'bee'"):
        data.load(wrong)
    with pytest.raises(ValueError, match="image_size"):
        data.load("synthetic", image_size=64)


def test_splitnet_trains_on_an_image_folder(tmp_path):
    from splitkern.splitnet.train import TrainConfig, run

    folder = write_image_folder(tmp_path / "imgs", train_per_class=6)
    (folder / "superclasses.json").write_text(json.dumps(SUPER))
    config = TrainConfig(data=str(folder), image_size=32, workers=0, model="wrn10-1", split="2", stage1_epochs=2,
                         warmup_epochs=1, stage2_epochs=1, batch_size=8, out=str(tmp_path / "run"), progress=False)
    metrics = run(config)
    assert 0 <= metrics["test_acc"] <= 1 and "nmi_coarse" in metrics
    assert sorted(c for group in metrics["groups"] for c in group) == sorted(CLASSES)
    import splitkern
    from splitkern.splitnet.io import describe
    assert describe(tmp_path / "run" / "split.pt")["input_shape"] == (3, 32, 32)
    assert splitkern.load(tmp_path / "run" / "split.pt")(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize("model", ["resnet18", "tv-alexnet"])
def test_torchvision_models_train_on_an_image_folder(tmp_path, model):
    from splitkern.splitnet.train import TrainConfig, run

    folder = write_image_folder(tmp_path / "imgs", train_per_class=4, size=72)
    config = TrainConfig(data=str(folder), image_size=64, workers=0, model=model, split="2-2", stage1_epochs=2,
                         warmup_epochs=1, stage2_epochs=1, batch_size=8, lr=0.01, out=str(tmp_path / "run"),
                         progress=False)
    metrics = run(config)
    assert metrics["params_split"] < metrics["params_dense"] and 0 <= metrics["test_acc"] <= 1
    import splitkern
    split_model = splitkern.load(tmp_path / "run" / "split.pt").eval()
    assert type(split_model).__name__ in ("SplitReadyResNet", "SplitReadyAlexNet")
    assert split_model(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    if model == "resnet18":  # splitkern infer reads the same folder at the recorded size
        import os
        import subprocess
        import sys
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        ckpt = str(tmp_path / "run" / "split.pt")
        out = subprocess.run([sys.executable, "-m", "splitkern.cli", "infer", "--ckpt", ckpt, "--data", str(folder),
                              "--workers", "0"], capture_output=True, text=True, timeout=300, env=env, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"test accuracy {100 * metrics['test_acc']:.2f}%" in out.stdout


def test_tv_alexnet_refuses_small_images(tmp_path):
    from splitkern.splitnet.train import Trainer, TrainConfig

    with pytest.raises(ValueError, match="tv-alexnet needs images of at least 63x63"):
        Trainer(TrainConfig(model="tv-alexnet", split="2", out=str(tmp_path / "r"), progress=False))
