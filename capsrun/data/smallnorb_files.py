"""The smallNORB data set (LeCun, Huang & Bottou 2004, https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/)
from its six "binary matrix" files, for `data=smallnorb`.

smallNORB: 50 toys of 5 categories (animal, human, airplane, truck, car; 10 instances each),
photographed by two cameras (a stereo pair) at 9 elevations, 18 azimuths and 6 lightings:
24,300 training pairs (instances 4, 6, 7, 8, 9) and 24,300 test pairs (instances 0, 1, 2, 3, 5)
of 96x96 grey images. Each half is three files, gzipped (`.mat.gz`, as distributed) or not:

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat

`dat` uint8 [N, 2, 96, 96] (left camera first), `cat` int32 [N] (the category 0..4), `info` int32
[N, 4]: instance (0..9), elevation (0..8: 30 to 70 degrees in steps of 5), azimuth (0, 2, .., 34:
times 10 degrees) and lighting (0..5).

The format (not MATLAB's, despite the suffix) is a header of little-endian int32 words: a magic
number naming the element type (0x1E3D4C55 uint8, 0x1E3D4C54 int32, 0x1E3D4C51 float32, 0x1E3D4C53
float64, 0x1E3D4C56 int16: the "lush" matrix codes, as in the data set's page and e.g. the
readers of google-research/capsule_em and disentanglement_lib), the number of dimensions ndim,
then max(ndim, 3) sizes (for ndim < 3 the unused sizes are stored, as 1: the 1-D `cat` header has
3 sizes, 20 bytes in all), then the elements in C order, little-endian.

Decoding 850 MB (gzipped: ~ 150 MB) and resizing takes a minute, so the decoded, resized arrays
are cached in `<data.path>/.capsrun_cache/` (an .npz written atomically, keyed by the six files'
names, sizes and modification times and by the image size); the second load reads only it.
Every problem is a CapsrunError naming the file and the fix.
"""
import gzip
import hashlib
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from capsrun.atomic import unwritable_reason, write_bytes_atomic
from capsrun.errors import CapsrunError

DOWNLOAD = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
PREFIXES = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training",
            "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}
KINDS = ("dat", "cat", "info")
FILE_NAMES = tuple(f"{PREFIXES[part]}-{kind}.mat" for part in ("train", "test") for kind in KINDS)
CLASS_NAMES = ("animal", "human", "airplane", "truck", "car")
"""Category codes 0..4 of the `cat` files, in the order of the data set's page: four-legged
animals, human figures, airplanes, trucks, cars."""
PAIRS = 24_300
"""Pairs per half: 5 categories x 5 instances x 9 elevations x 18 azimuths x 6 lightings."""
SIDE = 96
INFO_COLUMNS = ("instance", "elevation", "azimuth", "lighting")
MAGIC = {0x1E3D4C55: np.dtype("<u1"), 0x1E3D4C54: np.dtype("<i4"), 0x1E3D4C51: np.dtype("<f4"),
         0x1E3D4C53: np.dtype("<f8"), 0x1E3D4C56: np.dtype("<i2")}
"""Magic number -> element type of a binary matrix (the lush codes; 0x1E3D4C52, "packed", is
not used by smallNORB and not read)."""
EXPECTED = {"dat": (np.uint8, 4), "cat": (np.int32, 1), "info": (np.int32, 2)}
"""Element type and number of dimensions of each kind of file."""
CACHE_FOLDER = ".capsrun_cache"
CACHE_VERSION = 1
"""Bumped when the cached arrays change meaning (a new version is a new cache file)."""
CHUNK = 1024
WHERE = (f"put the six smallNORB files ({', '.join(name + '.gz' for name in FILE_NAMES)}; gzipped or not) "
         f"from {DOWNLOAD} in one folder and set data.path to it")


@dataclass
class SmallNorb:
    """Both halves, resized: images uint8 [N, 2, S, S] (left, right camera), labels int32 [N],
    info int32 [N, 4] (instance, elevation, azimuth, lighting) for the train and test halves."""

    x_train: np.ndarray
    y_train: np.ndarray
    info_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info_test: np.ndarray


def decode_binary_matrix(raw: bytes, source: str) -> np.ndarray:
    """A binary matrix (the bytes of a whole, decompressed file) -> numpy array of its type and
    shape. CapsrunError for an unknown magic number, a bad number of dimensions, negative sizes,
    or a length that does not match the header (truncated or padded)."""
    if len(raw) < 8:
        raise CapsrunError(f"{source} is {len(raw)} bytes, too short for a smallNORB header; it is truncated: "
                           f"download it again ({DOWNLOAD})")
    magic, ndim = (int(value) for value in np.frombuffer(raw, "<i4", count=2))
    if magic not in MAGIC:
        raise CapsrunError(f"{source} starts with 0x{magic & 0xFFFFFFFF:08X}, not a smallNORB binary-matrix magic "
                           f"number (uint8 0x1E3D4C55, int32 0x1E3D4C54); it is not a smallNORB file: {WHERE}")
    if not 1 <= ndim <= 16:
        raise CapsrunError(f"{source}: the header gives {ndim} dimensions; the file is damaged: download it again "
                           f"({DOWNLOAD})")
    stored = max(ndim, 3)
    header = 8 + 4 * stored
    if len(raw) < header:
        raise CapsrunError(f"{source} ends inside its header; it is truncated: download it again ({DOWNLOAD})")
    dims = tuple(int(size) for size in np.frombuffer(raw, "<i4", count=stored, offset=8)[:ndim])
    if min(dims) < 0:
        raise CapsrunError(f"{source}: the header gives negative sizes {dims}; the file is damaged: download it "
                           f"again ({DOWNLOAD})")
    dtype = MAGIC[magic]
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise CapsrunError(f"{source} is {len(raw):,} bytes but its header ({' x '.join(map(str, dims))} "
                           f"{dtype.name}) needs {expected:,}; it is truncated or damaged: download it again "
                           f"({DOWNLOAD})")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def read_binary_matrix(path: Path) -> np.ndarray:
    """One smallNORB file (`.mat` or gzipped `.mat.gz`, told apart by content) as a numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CapsrunError(f"cannot read {path} ({error}); it is truncated or damaged: download it again "
                           f"({DOWNLOAD})") from None
    return decode_binary_matrix(raw, str(path))


def find_files(folder: Path) -> Dict[str, Path]:
    """{file name without .gz: path} of the six files in `folder` (either form); one CapsrunError
    naming all six and the folder if any is missing."""
    folder = Path(folder).expanduser()
    found, missing = {}, []
    for name in FILE_NAMES:
        candidates = [path for path in (folder / name, folder / f"{name}.gz") if path.is_file()]
        if candidates:
            found[name] = candidates[0]
        else:
            missing.append(name)
    if missing:
        raise CapsrunError(f"data.path {folder} lacks {len(missing)} of the six smallNORB files "
                           f"(e.g. {missing[0]}[.gz]); {WHERE}")
    return found


def _check_half(part: str, dat: np.ndarray, cat: np.ndarray, info: np.ndarray, paths: Dict[str, Path]) -> None:
    names = {kind: paths[f"{PREFIXES[part]}-{kind}.mat"] for kind in KINDS}
    for kind, array in (("dat", dat), ("cat", cat), ("info", info)):
        dtype, ndim = EXPECTED[kind]
        if array.dtype != dtype or array.ndim != ndim:
            raise CapsrunError(f"{names[kind]} holds {array.dtype} {list(array.shape)}, not the {ndim}-D "
                               f"{np.dtype(dtype).name} array of a smallNORB {kind} file: {WHERE}")
    if dat.shape[1:] != (2, SIDE, SIDE):
        raise CapsrunError(f"{names['dat']} holds images {list(dat.shape[1:])}, not smallNORB's stereo pairs "
                           f"[2, {SIDE}, {SIDE}]: {WHERE}")
    if info.shape[1] != len(INFO_COLUMNS):
        raise CapsrunError(f"{names['info']} has {info.shape[1]} columns, not smallNORB's 4 (instance, elevation, "
                           f"azimuth, lighting): {WHERE}")
    if not len(dat) == len(cat) == len(info):
        raise CapsrunError(f"the {part} files of smallNORB disagree: {len(dat)} image pairs, {len(cat)} labels, "
                           f"{len(info)} info rows; download them again ({DOWNLOAD})")
    if cat.size and (cat.min() < 0 or cat.max() >= len(CLASS_NAMES)):
        raise CapsrunError(f"{names['cat']} holds categories outside 0..4; it is not a smallNORB cat file: {WHERE}")


def resize_pairs(pairs: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 2, 96, 96] -> uint8 [N, 2, size, size] by TensorFlow's bilinear resize (half-pixel
    centres, no antialiasing: for 96 -> 48 each output pixel is the mean of a 2x2 block), rounded.

    The EM paper's code (google-research capsule_em/norb/norb_record.py) resizes to 48x48 with
    TF1's tf.image.resize_images (bilinear, no half-pixel centres: for 96 -> 48 that keeps every
    other pixel); the mean is the smoother, alias-free reading of "downsample to 48x48".
    """
    if size == pairs.shape[-1]:
        return pairs
    import tensorflow as tf  # only a resize needs TensorFlow here

    out = np.empty((len(pairs), 2, size, size), np.uint8)
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start:start + CHUNK].reshape(-1, pairs.shape[2], pairs.shape[3], 1)
        resized = tf.image.resize(tf.convert_to_tensor(chunk, tf.float32), [size, size], method="bilinear")
        out[start:start + CHUNK] = np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8).reshape(-1, 2, size,
                                                                                                       size)
    return out


def cache_path(folder: Path, paths: Dict[str, Path], size: int) -> Path:
    """`<folder>/.capsrun_cache/smallnorb-<size>-<key>.npz`; the key hashes the files' names, sizes and
    modification times, the size and CACHE_VERSION, so a replaced file or a new size is a new cache."""
    key = hashlib.sha256()
    for name in FILE_NAMES:
        stat = paths[name].stat()
        key.update(f"{paths[name].name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    key.update(f"size={size};version={CACHE_VERSION}".encode())
    return Path(folder).expanduser() / CACHE_FOLDER / f"smallnorb-{size}-{key.hexdigest()[:16]}.npz"


FIELDS = ("x_train", "y_train", "info_train", "x_test", "y_test", "info_test")


def _read_cache(path: Path, size: int) -> Optional[SmallNorb]:
    """The cached arrays, or None when the cache is missing or damaged (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in FIELDS}
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
        return None
    data = SmallNorb(**arrays)
    shapes_ok = (data.x_train.shape[1:] == data.x_test.shape[1:] == (2, size, size)
                 and len(data.x_train) == len(data.y_train) == len(data.info_train)
                 and len(data.x_test) == len(data.y_test) == len(data.info_test))
    return data if shapes_ok and data.x_train.dtype == np.uint8 else None


def _write_cache(path: Path, data: SmallNorb) -> None:
    """Writes the cache atomically; silently none when the folder is not writable (a read-only data
    folder still loads, only without the cache)."""
    if unwritable_reason(path.parent) is not None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, **{name: getattr(data, name) for name in FIELDS})
    try:
        write_bytes_atomic(path, buffer.getvalue())
    except OSError:
        return
    for stale in path.parent.glob(f"smallnorb-{data.x_train.shape[-1]}-*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)


def load_smallnorb(folder: Path, size: int = SIDE, use_cache: bool = True) -> SmallNorb:
    """smallNORB from the six files in `folder`, every image resized to size x size.

    Returns a SmallNorb (images uint8 [24300, 2, size, size] per half). Read from the cache when it
    matches the files and `size`, else decoded, checked and cached (`use_cache=False`: neither)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CapsrunError(f"data.path {folder} is not a folder; {WHERE}")
    if not 8 <= size <= SIDE:
        raise ValueError(f"size must be in [8, {SIDE}], got {size}")
    paths = find_files(folder)
    cache = cache_path(folder, paths, size)
    if use_cache:
        cached = _read_cache(cache, size)
        if cached is not None:
            return cached
    halves = {}
    for part in ("train", "test"):
        dat, cat, info = (read_binary_matrix(paths[f"{PREFIXES[part]}-{kind}.mat"]) for kind in KINDS)
        _check_half(part, dat, cat, info, paths)
        halves[part] = (resize_pairs(dat, size), cat.astype(np.int32), info.astype(np.int32))
    data = SmallNorb(*halves["train"], *halves["test"])
    if use_cache:
        _write_cache(cache, data)
    return data


def as_images(pairs: np.ndarray, stereo: bool) -> np.ndarray:
    """uint8 [N, 2, S, S] -> [N, S, S, 2] (both cameras as channels) or [N, S, S, 1] (the left one)."""
    return np.ascontiguousarray(pairs.transpose(0, 2, 3, 1) if stereo else pairs[:, 0, :, :, None])


VIEWPOINT_SPLITS = ("none", "azimuth", "elevation")
FAMILIAR_AZIMUTHS = (30, 32, 34, 0, 2, 4)
"""Azimuth codes (times 10 degrees) of 300, 320, 340, 0, 20 and 40 degrees: the training
viewpoints of the EM paper's azimuth experiment (Hinton, Sabour & Frosst 2018, section 6:
trained on these 6 of the 18 azimuths, tested on 60 .. 280 degrees)."""
FAMILIAR_ELEVATIONS = (0, 1, 2)
"""The three lowest elevations (30, 35, 40 degrees): the training viewpoints of the EM paper's
elevation experiment (tested on the other 6)."""


def familiar(info: np.ndarray, split: str) -> np.ndarray:
    """bool [N]: which rows of info int32 [N, 4] show a familiar viewpoint of `split` (azimuth,
    elevation; `none`: all)."""
    if split == "azimuth":
        return np.isin(info[:, 2], FAMILIAR_AZIMUTHS)
    if split == "elevation":
        return np.isin(info[:, 1], FAMILIAR_ELEVATIONS)
    if split == "none":
        return np.ones(len(info), bool)
    raise ValueError(f"viewpoint split must be one of {VIEWPOINT_SPLITS}, got {split!r}")


def info_columns(info: np.ndarray) -> Tuple[np.ndarray, ...]:
    """(instance, elevation, azimuth in degrees, lighting) int arrays [N] from info int32 [N, 4]."""
    return info[:, 0], info[:, 1], info[:, 2] * 10, info[:, 3]
