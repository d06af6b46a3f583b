"""Data sources: the bundled MNIST, IDX folders, Keras-style .npz files, the Keras download cache,
CIFAR-10's Python batches, class-per-subfolder image trees and smallNORB's binary matrices.

Every source returns a `RawData` of uint8 images [N, H, W, C] and int32 labels [N] (smallNORB also
int32 info [N, 4] per image: instance, elevation, azimuth, lighting). Nothing is
downloaded: a data set that is not on disk is a CapsrunError saying where to put it.
"""
import gzip
import hashlib
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from capsrun.data import smallnorb_files
from capsrun.errors import CapsrunError

BUNDLED_MNIST = Path(__file__).resolve().parent / "bundled" / "mnist"
KERAS_CACHE = Path("~/.keras/datasets").expanduser()
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_DTYPE_CODE = 0x08
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
DIGITS = tuple(str(digit) for digit in range(10))
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class RawData:
    """A data set as stored: uint8 images [N, H, W, C], int32 labels [N], class names [J]; for
    smallNORB also int32 info [N, 4] (instance, elevation, azimuth code, lighting) per image."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple
    info_train: Optional[np.ndarray] = None
    info_test: Optional[np.ndarray] = None


def read_checksums(folder: Path) -> Dict[str, str]:
    """{raw file name: sha256 hex} from `folder/SHA256SUMS`, or {} when there is none."""
    sums_file = Path(folder) / "SHA256SUMS"
    if not sums_file.is_file():
        return {}
    sums = {}
    for line in sums_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def read_idx(path: Path, expected_sha256: Optional[str] = None) -> np.ndarray:
    """Parses one IDX file (gzip or raw) into a numpy array; checks the header, size and checksum.

    The checksum is taken over the decompressed bytes, the canonical MNIST sums.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CapsrunError(f"cannot read data file {path}: {error}; restore it from a clean copy") from None
    if expected_sha256 and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise CapsrunError(f"data file {path} is corrupt (SHA-256 mismatch); restore it from a clean copy")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_DTYPE_CODE or raw[3] < 1:
        raise CapsrunError(f"data file {path} is not a uint8 IDX file (bad header)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise CapsrunError(
            f"data file {path} is truncated or padded: {len(raw) - header} bytes of data "
            f"for shape {dims}; restore it from a clean copy"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise CapsrunError(f"data folder {folder} has no {name} or {name}.gz; point data.path at an MNIST-style IDX folder")


def load_idx_folder(folder: Path) -> Dict[str, np.ndarray]:
    """The four MNIST-style IDX files of `folder`; verified against its SHA256SUMS if present."""
    folder = Path(folder)
    sums = read_checksums(folder)
    return {key: read_idx(_find_idx(folder, name), sums.get(name)) for key, name in IDX_FILES.items()}


def load_npz(path: Path) -> Dict[str, np.ndarray]:
    """A Keras-style .npz with x_train, y_train, x_test, y_test."""
    try:
        with np.load(path) as archive:
            missing = [key for key in IDX_FILES if key not in archive.files]
            if missing:
                raise CapsrunError(
                    f"{path} lacks {', '.join(missing)}; a data .npz needs x_train, y_train, x_test, y_test")
            return {key: archive[key] for key in IDX_FILES}
    except (OSError, ValueError, zlib.error, EOFError) as error:
        raise CapsrunError(f"cannot read {path}: {error}") from None


def load_cifar10_batches(folder: Path) -> Dict[str, np.ndarray]:
    """CIFAR-10's `cifar-10-batches-py` folder (data_batch_1..5, test_batch) as NHWC uint8."""
    folder = Path(folder)

    def read(name: str) -> Tuple[np.ndarray, np.ndarray]:
        try:
            with open(folder / name, "rb") as stream:
                batch = pickle.load(stream, encoding="bytes")
        except (OSError, pickle.UnpicklingError, EOFError) as error:
            raise CapsrunError(f"cannot read CIFAR-10 file {folder / name}: {error}") from None
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.asarray(batch[b"labels"], np.int32)

    train = [read(f"data_batch_{index}") for index in range(1, 6)]
    x_test, y_test = read("test_batch")
    return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test}


def _read_image(path: Path, size: Optional[Sequence[int]], channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise CapsrunError(f"cannot read image {path}: {error}") from None
    return array[..., None] if channels == 1 else array


def _class_tree(root: Path) -> Tuple[list, list]:
    classes = sorted(entry.name for entry in Path(root).iterdir() if entry.is_dir())
    files = [(path, label) for label, name in enumerate(classes)
             for path in sorted((Path(root) / name).rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    return classes, files


def load_image_folder(root: Path, image_size: Optional[Sequence[int]], channels: Optional[int], test_fraction: float,
                      seed: int) -> Tuple[Dict[str, np.ndarray], Tuple[str, ...]]:
    """A class-per-subfolder tree of PNG/JPEG images of any size.

    `root/train/<class>/*` and `root/test/<class>/*` when both exist; otherwise `root/<class>/*`
    with a `test_fraction` of every class held out (fixed by `seed`). Images are resized to
    `image_size` [H, W] (default: the first image's size) and converted to `channels` (1 = grey,
    3 = RGB; default: RGB if the first image has colour).
    """
    root = Path(root)
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    classes, train_files = _class_tree(root / "train" if split_dirs else root)
    if len(classes) < 2 or not train_files:
        raise CapsrunError(f"{root} needs one subfolder of PNG/JPEG images per class (at least 2 classes)")
    if split_dirs:
        test_classes, test_files = _class_tree(root / "test")
        if test_classes != classes:
            raise CapsrunError(f"{root}/train and {root}/test have different class subfolders")
    else:
        rng = np.random.default_rng(seed)
        held_out = set()
        for label in range(len(classes)):
            members = [index for index, (_, lab) in enumerate(train_files) if lab == label]
            count = max(1, int(round(len(members) * test_fraction))) if len(members) > 1 else 0
            held_out.update(rng.permutation(members)[:count].tolist())
        test_files = [item for index, item in enumerate(train_files) if index in held_out]
        train_files = [item for index, item in enumerate(train_files) if index not in held_out]
    if channels is None or image_size is None:
        with Image.open(train_files[0][0]) as first:
            channels = channels or (1 if first.mode in ("L", "1", "I;16", "I") else 3)
            image_size = image_size or (first.height, first.width)

    def stack(files: list) -> Tuple[np.ndarray, np.ndarray]:
        images = np.stack([_read_image(path, image_size, channels) for path, _ in files])
        return images, np.asarray([label for _, label in files], np.int32)

    (x_train, y_train), (x_test, y_test) = stack(train_files), stack(test_files)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}, tuple(classes)


def _as_images(array: np.ndarray, source: Any) -> np.ndarray:
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise CapsrunError(f"images in {source} must have shape [N, H, W] or [N, H, W, C], got {array.shape}")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise CapsrunError(f"images in {source} must be uint8 pixel values in [0, 255]")
        array = array.astype(np.uint8)
    return array


def _from_path_or_cache(data_cfg: Any, cache_entry: str, what: str) -> Path:
    """data.path if given, else the Keras download cache entry; an explanation if neither exists."""
    source = Path(data_cfg.path).expanduser() if data_cfg.path else KERAS_CACHE / cache_entry
    if not source.exists():
        raise CapsrunError(
            f"{what} is not on this machine (looked for {source}); capsrun never downloads: copy it there "
            f"(e.g. from a machine with internet, keras.datasets.{data_cfg.name}.load_data()) or set data.path"
        )
    return source


def _read_path(source: Path) -> Dict[str, np.ndarray]:
    if source.is_dir():
        return load_idx_folder(source)
    if source.suffix == ".npz":
        return load_npz(source)
    raise CapsrunError(f"data.path {source} is neither a folder of IDX files nor a .npz file")


def load_source(data_cfg: Any, seed: int) -> RawData:
    """The data set named by `data.name` (mnist, fashion_mnist, cifar10, folder, npz, smallnorb, or
    the MNIST derivatives affnist and multimnist, which start from MNIST) as a RawData."""
    name = data_cfg.name
    classes = DIGITS
    if name == "smallnorb":
        return load_smallnorb_source(data_cfg)
    if name in ("mnist", "affnist", "multimnist", "npz"):
        if name == "npz" and not data_cfg.path:
            raise CapsrunError("data=npz needs data.path=FILE.npz (x_train, y_train, x_test, y_test)")
        source = Path(data_cfg.path).expanduser() if data_cfg.path else BUNDLED_MNIST
        arrays = _read_path(source)
    elif name == "fashion_mnist":
        source = _from_path_or_cache(data_cfg, "fashion-mnist", "Fashion-MNIST")
        arrays, classes = _read_path(source), FASHION_CLASSES
    elif name == "cifar10":
        source = _from_path_or_cache(data_cfg, "cifar-10-batches-py", "CIFAR-10")
        arrays = load_cifar10_batches(source) if source.is_dir() else _read_path(source)
        classes = CIFAR10_CLASSES
    elif name == "folder":
        if not data_cfg.path:
            raise CapsrunError("data=folder needs data.path=FOLDER (one subfolder of images per class)")
        source = Path(data_cfg.path).expanduser()
        arrays, classes = load_image_folder(source, data_cfg.image_size, data_cfg.channels,
                                            data_cfg.test_fraction, seed)
    else:
        raise CapsrunError(f"unknown data.name '{name}'")
    x_train, x_test = _as_images(arrays["x_train"], source), _as_images(arrays["x_test"], source)
    y_train = np.asarray(arrays["y_train"]).astype(np.int32).reshape(-1)
    y_test = np.asarray(arrays["y_test"]).astype(np.int32).reshape(-1)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise CapsrunError(f"{source}: the numbers of images and labels differ")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise CapsrunError(f"{source}: train and test images have different shapes")
    if name in ("npz",) or (name == "mnist" and data_cfg.path):
        classes = tuple(str(label) for label in range(int(max(y_train.max(), y_test.max())) + 1))
    return RawData(x_train, y_train, x_test, y_test, tuple(classes))


def load_smallnorb_source(data_cfg: Any) -> RawData:
    """smallNORB from the six files of `data.path`, resized to `data.image_size` (square; null = 96)
    and cached there; `data.stereo` picks both cameras as 2 channels or the left one."""
    if not data_cfg.path:
        raise CapsrunError(f"data=smallnorb needs data.path=FOLDER; {smallnorb_files.WHERE}")
    size = int(data_cfg.image_size[0]) if data_cfg.image_size else smallnorb_files.SIDE
    data = smallnorb_files.load_smallnorb(Path(data_cfg.path), size)
    return RawData(smallnorb_files.as_images(data.x_train, data_cfg.stereo), data.y_train,
                   smallnorb_files.as_images(data.x_test, data_cfg.stereo), data.y_test,
                   smallnorb_files.CLASS_NAMES, data.info_train, data.info_test)
