"""The real affNIST test set (Tieleman, https://www.cs.toronto.edu/~tijmen/affNIST/) from its
MATLAB files, for `data.affine.path` of `data=affnist`.

affNIST's test data are the 10,000 MNIST test digits, each transformed 32 times (320,000 images of
40x40). The University of Toronto distributes them as one file `test.mat` (zipped:
`test.mat.zip`) or as 32 batches `1.mat` .. `32.mat` of 10,000 images (zipped: `test_batches.zip`).
`data.affine.path` takes any of these: a `.mat` file (also gzip-compressed, `.mat.gz`), a folder of
the numbered batches, or a `.zip` holding either; nothing is extracted to disk.

Every file holds one MATLAB struct `affNISTdata` with (among others) the fields
`image` uint8 [1600, N] (one 40x40 image per column), `label_int` [1, N] (digits 0..9) and
`label_one_of_n` [10, N]; `affine_transform`, `human_readable_transform` and `index` (the MNIST
digit each image came from) are not needed here. Reading is `scipy.io.loadmat` (MATLAB v5 files).
Every problem is a CapsrunError naming the file and the fix.
"""
import gzip
import re
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, List, Optional, Tuple

import numpy as np

from capsrun.errors import CapsrunError

SIDE = 40
"""affNIST images are 40x40: the 28x28 MNIST digit centred with a 6-pixel border, then transformed."""
PIXELS = SIDE * SIDE
STRUCT = "affNISTdata"
NUM_CLASSES = 10
DOWNLOAD = "https://www.cs.toronto.edu/~tijmen/affNIST/"
FORMS = (f"point data.affine.path at affNIST's test.mat, a folder of its test batches 1.mat .. 32.mat, "
         f"or test.mat.zip / test_batches.zip (from {DOWNLOAD})")

Opener = Callable[[], Any]
"""A function returning a context manager that yields one .mat file as a binary stream."""


def columns_to_images(image: np.ndarray) -> np.ndarray:
    """affNIST's `image` field uint8 [1600, N] -> images uint8 [N, 40, 40, 1].

    Orientation: pixel (row r, column c) of image n is `image[40 * r + c, n]`, i.e. each column
    is the image in row-major order, and the images are `image.T.reshape(N, 40, 40)` with no
    per-image transpose. A column written by MATLAB's own `img(:)` would be column-major
    (`image[r + 40 * c, n]`, needing `order="F"`), so the files were evidently written from
    transposed images (or outside MATLAB): the public readers of these files (e.g. the Kaggle
    repackaging of affNIST and the CapsNet reimplementations that test MNIST-trained models on it)
    all take `image.T.reshape(N, 40, 40)` and show upright digits, which models trained on upright
    MNIST recognise; column-major reading would mirror every digit along its main diagonal. (That
    rests on those readers: capsrun never downloads, so it was not checked on the real files.)
    """
    count = image.shape[1]
    return np.ascontiguousarray(image.T).reshape(count, SIDE, SIDE, 1)


def _field(struct: Any, name: str) -> Optional[np.ndarray]:
    """Field `name` of a MATLAB struct as loaded by scipy: a `mat_struct` (struct_as_record=False),
    a numpy record (struct_as_record=True, maybe inside a [1, 1] array) or a dict; None if absent."""
    if isinstance(struct, dict):
        value = struct.get(name)
    elif isinstance(struct, np.ndarray) and struct.dtype.names is not None:
        value = struct[name].reshape(-1)[0] if name in struct.dtype.names and struct.size == 1 else None
    elif isinstance(struct, np.void) and struct.dtype.names is not None:
        value = struct[name] if name in struct.dtype.names else None
    else:
        value = getattr(struct, name, None) if name in getattr(struct, "_fieldnames", ()) else None
    return None if value is None else np.asarray(value)


def _labels(struct: Any, count: int, source: str) -> np.ndarray:
    """int32 [count] from `label_int` (any of [1, N], [N, 1], [N]), else the argmax of
    `label_one_of_n` [10, N]."""
    labels = _field(struct, "label_int")
    if labels is None:
        one_hot = _field(struct, "label_one_of_n")
        if one_hot is None:
            raise CapsrunError(f"{source}: the affNISTdata struct has neither label_int nor label_one_of_n; "
                               f"it is not one of affNIST's files ({FORMS})")
        one_hot = one_hot.reshape(NUM_CLASSES, -1) if one_hot.size == NUM_CLASSES * count else one_hot
        if one_hot.shape != (NUM_CLASSES, count):
            raise CapsrunError(f"{source}: label_one_of_n is {one_hot.shape}, not 10 x {count}; {FORMS}")
        return one_hot.argmax(axis=0).astype(np.int32)
    labels = labels.reshape(-1)
    if labels.size != count:
        raise CapsrunError(f"{source}: {count} images but {labels.size} labels in label_int; the file is damaged, "
                           "download it again")
    if labels.size and (not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels))
                        or labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = labels[~np.isin(labels, np.arange(NUM_CLASSES))]
        raise CapsrunError(f"{source}: labels must be the digits 0..9, found {bad[0].item()!r}; this is not affNIST's "
                           f"label_int: {FORMS}")
    return labels.astype(np.int32)


def read_mat(stream: BinaryIO, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """One affNIST .mat file (a binary stream) -> (images uint8 [N, 40, 40, 1], labels int32 [N])."""
    from scipy.io import loadmat  # imported here: only data.affine.path needs SciPy
    from scipy.io.matlab import MatReadError

    try:
        variables = loadmat(stream, squeeze_me=True, struct_as_record=False)
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise CapsrunError(f"{source} is a MATLAB v7.3 (HDF5) file; affNIST's files are MATLAB v5: use the original "
                           f"download ({DOWNLOAD}) or re-save it with save(FILE, 'affNISTdata', '-v7')") from None
    except (MatReadError, ValueError, TypeError, OSError, EOFError, zlib.error, zipfile.BadZipFile,
            gzip.BadGzipFile) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CapsrunError(f"cannot read {source} as a MATLAB .mat file ({detail}); it is truncated or not a "
                           f".mat file: download it again, or {FORMS}") from None
    if STRUCT not in variables:
        found = ", ".join(sorted(key for key in variables if not key.startswith("__"))) or "none"
        raise CapsrunError(f"{source} has no {STRUCT} struct (its variables: {found}); it is not one of affNIST's "
                           f"files: {FORMS}")
    struct = variables[STRUCT]
    image = _field(struct, "image")
    if image is None:
        raise CapsrunError(f"{source}: the {STRUCT} struct has no image field; it is not one of affNIST's files: "
                           f"{FORMS}")
    if image.ndim == 1 and image.size == PIXELS:  # squeeze_me turns a file of one image into [1600]
        image = image.reshape(PIXELS, 1)
    if image.ndim != 2 or image.shape[0] != PIXELS:
        raise CapsrunError(f"{source}: images are {' x '.join(map(str, image.shape))}, not 1600 x N (one 40x40 "
                           f"image per column); point data.affine.path at the 40x40 affNIST test set ({DOWNLOAD})")
    if image.dtype != np.uint8:
        if image.size and (not np.issubdtype(image.dtype, np.number) or image.min() < 0 or image.max() > 255):
            raise CapsrunError(f"{source}: image holds {image.dtype} values outside the pixel range 0..255; "
                               f"point data.affine.path at affNIST's own uint8 files ({DOWNLOAD})")
        image = image.astype(np.uint8)
    labels = _labels(struct, image.shape[1], source)
    return columns_to_images(image), labels


def _batch_number(name: str) -> Optional[int]:
    match = re.fullmatch(r"(\d+)\.mat", name, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def _choose(names: List[str], where: str) -> List[str]:
    """The .mat files (paths inside a folder or zip) to read, in order: the numbered batches
    1.mat .. K.mat when there are any (all of them, none missing), else the one .mat file."""
    numbered = {}
    for name in names:
        number = _batch_number(Path(name).name)
        if number is not None:
            if number in numbered:
                raise CapsrunError(f"{where} holds {number}.mat twice ({numbered[number]}, {name}); keep one set of "
                                   "batches (the test batches)")
            numbered[number] = name
    if numbered:
        missing = sorted(set(range(1, max(numbered) + 1)) - set(numbered))
        if missing:
            raise CapsrunError(f"{where} lacks batch {missing[0]}.mat of 1.mat .. {max(numbered)}.mat; extract or "
                               "download the test batches again")
        return [numbered[number] for number in sorted(numbered)]
    if len(names) == 1:
        return names
    if not names:
        raise CapsrunError(f"{where} holds no .mat files; {FORMS}")
    raise CapsrunError(f"{where} holds several .mat files ({', '.join(sorted(names)[:3])}, ...) and no numbered "
                       f"batches; {FORMS}")


def _zip_members(archive: zipfile.ZipFile) -> List[str]:
    return [info.filename for info in archive.infolist()
            if not info.is_dir() and info.filename.lower().endswith(".mat")
            and not info.filename.startswith("__MACOSX/") and not Path(info.filename).name.startswith(".")]


@contextmanager
def _opened(path: Path) -> Iterator[List[Tuple[str, Opener]]]:
    """[(source name, opener)] of every .mat file that `path` stands for, in reading order."""
    if path.is_dir():
        names = _choose(sorted(entry.name for entry in path.iterdir()
                               if entry.is_file() and entry.suffix.lower() == ".mat"
                               and not entry.name.startswith(".")), str(path))
        yield [(str(path / name), lambda name=name: open(path / name, "rb")) for name in names]
        return
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".zip":
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise CapsrunError(f"cannot open {path} as a zip archive ({error}); it is truncated or damaged: download "
                               f"it again ({DOWNLOAD})") from None
        with archive:
            names = _choose(_zip_members(archive), str(path))
            yield [(f"{path}:{name}", lambda name=name: archive.open(name)) for name in names]
        return
    if suffixes.endswith(".mat.gz"):
        yield [(str(path), lambda: gzip.open(path, "rb"))]
        return
    if path.suffix.lower() == ".mat":
        yield [(str(path), lambda: open(path, "rb"))]
        return
    raise CapsrunError(f"data.affine.path {path} is not a .mat file, a .zip or a folder of .mat files; {FORMS}")


def check_path(path: Any) -> Path:
    """`path` (str or Path, `~` allowed) as a Path; CapsrunError if nothing is there."""
    source = Path(str(path)).expanduser()
    if not source.exists():
        raise CapsrunError(f"data.affine.path {source} does not exist; {FORMS}, or set data.affine.path=null "
                           "for the generated affine test set")
    return source


def load_affnist(path: Any, limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """affNIST's test images from `path` (a .mat, .mat.gz, .zip, or folder of numbered batches):
    (images uint8 [N, 40, 40, 1], labels int32 [N]), all of them or the first `limit`.

    Batches are read in the order 1.mat, 2.mat, ... and reading stops once `limit` images are in.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")
    source = check_path(path)
    images, labels, count = [], [], 0
    with _opened(source) as files:
        for name, opener in files:
            try:
                with opener() as stream:
                    batch_images, batch_labels = read_mat(stream, name)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
                raise CapsrunError(f"cannot read {name} ({error}); the file is truncated or damaged: download it "
                                   f"again ({DOWNLOAD})") from None
            keep = len(batch_labels) if limit is None else min(len(batch_labels), limit - count)
            images.append(batch_images[:keep])
            labels.append(batch_labels[:keep])
            count += keep
            if limit is not None and count >= limit:
                break
    if count == 0:
        raise CapsrunError(f"{source} holds no images; {FORMS}")
    if len(images) == 1:  # one file (test.mat: 320,000 images, 512 MB): no copy
        return images[0], labels[0]
    return np.concatenate(images), np.concatenate(labels)
