"""MNIST loading (bundled copy, IDX folders, .npz), checksums, splits and tf.data pipelines.

Arrays stay uint8 [N, H, W, C] from disk to the compiled step, which scales them to [0, 1]:
the pipeline moves a quarter of the bytes that float32 would need.
"""
import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from capsrun.errors import CapsrunError

BUNDLED_MNIST = Path(__file__).resolve().parent / "datasets" / "mnist"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_DTYPE_CODE = 0x08


@dataclass
class Split:
    """Images uint8 [N, H, W, C] and labels int32 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])


def read_checksums(folder):
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


def read_idx(path, expected_sha256=None):
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


def _find_idx(folder, name):
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise CapsrunError(f"data folder {folder} has no {name} or {name}.gz; point data.path at an MNIST-style IDX folder")


def load_idx_folder(folder):
    """The four MNIST IDX files of `folder` as arrays; verified against its SHA256SUMS if present."""
    folder = Path(folder)
    sums = read_checksums(folder)
    arrays = {key: read_idx(_find_idx(folder, name), sums.get(name)) for key, name in IDX_FILES.items()}
    return arrays


def load_npz(path):
    """A Keras-style .npz with x_train, y_train, x_test, y_test."""
    try:
        with np.load(path) as archive:
            missing = [key for key in IDX_FILES if key not in archive.files]
            if missing:
                raise CapsrunError(f"{path} lacks {', '.join(missing)}; a data .npz needs x_train, y_train, x_test, y_test")
            return {key: archive[key] for key in IDX_FILES}
    except (OSError, ValueError, zlib.error) as error:
        raise CapsrunError(f"cannot read {path}: {error}") from None


def _as_images(array, source):
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise CapsrunError(f"images in {source} must have shape [N, H, W] or [N, H, W, C], got {array.shape}")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise CapsrunError(f"images in {source} must be uint8 pixel values in [0, 255]")
        array = array.astype(np.uint8)
    return array


def load_arrays(data_cfg):
    """(x_train, y_train, x_test, y_test) as uint8 images [N, H, W, C] and int32 labels [N]."""
    if data_cfg.path is None:
        arrays = load_idx_folder(BUNDLED_MNIST)
        source = BUNDLED_MNIST
    else:
        source = Path(data_cfg.path).expanduser()
        if source.is_dir():
            arrays = load_idx_folder(source)
        elif source.is_file() and source.suffix == ".npz":
            arrays = load_npz(source)
        elif source.exists():
            raise CapsrunError(f"data.path {source} is neither a folder of IDX files nor a .npz file")
        else:
            raise CapsrunError(f"data.path {source} does not exist; set data.path to an IDX folder or a .npz file")
    x_train, x_test = _as_images(arrays["x_train"], source), _as_images(arrays["x_test"], source)
    y_train = np.asarray(arrays["y_train"]).astype(np.int32).reshape(-1)
    y_test = np.asarray(arrays["y_test"]).astype(np.int32).reshape(-1)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise CapsrunError(f"{source}: the numbers of images and labels differ")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise CapsrunError(f"{source}: train and test images have different shapes")
    return x_train, y_train, x_test, y_test


def load_splits(data_cfg, seed):
    """Train / validation / test splits. Validation is carved from the training set by a
    permutation fixed by `seed`; `data.train_size` and `data.test_size` truncate for quick runs."""
    x_train, y_train, x_test, y_test = load_arrays(data_cfg)
    if data_cfg.val_size >= len(x_train):
        raise CapsrunError(
            f"data.val_size={data_cfg.val_size} leaves no training data ({len(x_train)} training images)"
        )
    order = np.random.default_rng(seed).permutation(len(x_train))
    val_idx, train_idx = order[: data_cfg.val_size], order[data_cfg.val_size:]
    if data_cfg.train_size is not None:
        train_idx = train_idx[: data_cfg.train_size]
    test_count = len(x_test) if data_cfg.test_size is None else min(data_cfg.test_size, len(x_test))
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return DataSplits(
        train=Split(x_train[train_idx], y_train[train_idx]),
        val=Split(x_train[val_idx], y_train[val_idx]),
        test=Split(x_test[:test_count], y_test[:test_count]),
        num_classes=num_classes,
    )


def random_shift(images, max_shift, seed):
    """Shifts each image of a batch by up to `max_shift` pixels in each direction, zero padded.

    images: [B, H, W, C] (any dtype); seed: int [2] for stateless randomness. Returns [B, H, W, C].
    One pad and two batched gathers: no per-example Python or map.
    """
    height, width = images.shape[1], images.shape[2]
    padding = [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]]
    padded = tf.pad(images, padding)
    offsets = tf.random.stateless_uniform(
        [tf.shape(images)[0], 2], seed=seed, minval=0, maxval=2 * max_shift + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)


def _with_options(dataset):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options)


def steps_per_epoch(split, batch_size):
    """Number of full global batches per training epoch (the last partial batch is dropped)."""
    return len(split) // batch_size


def train_dataset(split, batch_size, seed, epoch, shift_pixels, skip_batches=0):
    """Batches (uint8 images [B, H, W, C], int32 labels [B]) for one training epoch.

    The order and the shifts depend only on (seed, epoch), so a resumed run sees the same data;
    `skip_batches` skips the batches already trained on in a partly finished epoch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(split))
    dataset = tf.data.Dataset.from_tensor_slices((split.images[order], split.labels[order]))
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate().skip(skip_batches)

    def augment(index, batch):
        images, labels = batch
        if shift_pixels > 0:
            images = random_shift(images, shift_pixels, tf.stack([tf.cast(seed, tf.int64), epoch * 1_000_003 + index]))
        return images, labels

    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))


def eval_dataset(split, batch_size):
    """Batches (uint8 images, int32 labels) in order, the last one possibly partial."""
    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels)).batch(batch_size)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))
