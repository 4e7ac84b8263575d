import json
import pickle

import numpy as np
import pytest
import torch

from splitkern import data


def write_shards(folder, n_train=(6, 4), n_test=5, classes=100, coarse=20, **overrides):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(n_train):
        arrays = {"x": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                  "y_fine": rng.integers(0, classes, n).astype(np.uint8),
                  "y_coarse": rng.integers(0, coarse, n).astype(np.uint8)}
        arrays.update(overrides.get(f"train_{i}", {}))
        np.savez(folder / f"train_{i}.npz", **arrays)
    np.savez(folder / "test.npz", x=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             y_fine=rng.integers(0, classes, n_test).astype(np.uint8),
             y_coarse=rng.integers(0, coarse, n_test).astype(np.uint8))
    meta = {"fine_names": [f"f{i}" for i in range(classes)], "coarse_names": [f"c{i}" for i in range(coarse)],
            "fine_to_coarse": [i % coarse for i in range(classes)]}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_npz_folder(tmp_path):
    ds = data.load(write_shards(tmp_path / "c100"))
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.y_train.dtype == np.int64 and ds.x_test.shape[0] == 5
    assert ds.num_classes == 100 and ds.has_coarse and ds.fine_names[3] == "f3"


@pytest.mark.parametrize("override, words", [
    ({"x": np.zeros((6, 32, 32), dtype=np.uint8)}, "'x' must be uint8"),
    ({"y_fine": np.full(6, 100, dtype=np.uint8)}, "outside"),
    ({"y_fine": np.zeros(5, dtype=np.uint8)}, "'y_fine' must have shape"),
])
def test_malformed_shard_names_the_file(tmp_path, override, words):
    write_shards(tmp_path / "bad", train_0=override)
    with pytest.raises(ValueError, match=f"train_0.npz.*{words}|{words}") as info:
        data.load(tmp_path / "bad")
    assert "train_0.npz" in str(info.value)


def test_missing_keys_and_files(tmp_path):
    folder = write_shards(tmp_path / "c")
    np.savez(folder / "train_1.npz", x=np.zeros((2, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="train_1.npz: missing keys"):
        data.load(folder)
    (folder / "test.npz").unlink()
    with pytest.raises(ValueError, match="test.npz"):
        data.load(folder)
    (folder / "train_0.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError):
        data.load_npz_folder(folder)
    with pytest.raises(ValueError, match="not a folder"):
        data.load(tmp_path / "nowhere")


def test_cifar_python_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 8), ("test", 4)):
        blob = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "fine_labels": list(rng.integers(0, 100, n)), "coarse_labels": list(rng.integers(0, 20, n))}
        with (folder / name).open("wb") as f:
            pickle.dump(blob, f)
    with (folder / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    ds = data.load(folder)
    assert ds.x_train.shape == (8, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    first = np.asarray(pickle.load((folder / "train").open("rb"))["data"][0]).reshape(3, 32, 32)
    np.testing.assert_array_equal(ds.x_train[0], first.transpose(1, 2, 0))  # CHW rows -> HWC images


def test_synthetic_is_deterministic_and_hierarchical():
    a = data.synthetic_hierarchy(seed=3, train_per_class=5, test_per_class=2)
    b = data.synthetic_hierarchy(seed=3, train_per_class=5, test_per_class=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.num_classes == 16 and a.fine_to_coarse == [f // 4 for f in range(16)]
    c = data.synthetic_hierarchy(seed=4, train_per_class=5, test_per_class=2)
    assert not np.array_equal(a.x_train, c.x_train)


def test_batches_normalise_augment_and_cover_everything():
    ds = data.synthetic_hierarchy(train_per_class=5, test_per_class=2)
    seen = []
    for images, labels in data.batches(ds.x_test, ds.y_test, 7, mean=ds.mean, std=ds.std, train=False):
        assert images.shape[1:] == (3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
        seen.append(labels)
    assert torch.equal(torch.cat(seen), torch.from_numpy(ds.y_test))  # test order kept, nothing dropped
    gen = torch.Generator().manual_seed(0)
    images, _ = next(data.batches(ds.x_train, ds.y_train, 64, mean=ds.mean, std=ds.std, train=True, generator=gen))
    plain, _ = next(data.batches(ds.x_train, ds.y_train, 64, mean=ds.mean, std=ds.std, train=False))
    assert images.shape == plain.shape
    assert abs(plain.mean().item()) < 0.2 and abs(plain.std().item() - 1) < 0.2
