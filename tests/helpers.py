"""Test-only helpers shared by several test files: the [B, I, J, D] view of dynamic routing and of
the digit-capsule votes, squash in NumPy, float32 comparisons, the MultiMNIST overlap measure, a
tree of class folders of images, and building a model from a composed config."""
import numpy as np
import tensorflow as tf
from PIL import Image

from capsrun.models.base import InputSpec
from capsrun.models.registry import build_model
from capsrun.models.routing.dynamic import route


def dynamic_routing(predictions, iterations):
    """Routing-by-agreement on u_hat float32 [B, I, J, D] (the paper's layout); returns (v [B, J, D],
    c [B, I, J]). The routing interface itself works in [B, J, I, D]."""
    capsules, coupling = route(tf.transpose(predictions, [0, 2, 1, 3]), iterations)
    return capsules, tf.transpose(coupling, [0, 2, 1])


def votes_in_paper_layout(layer, inputs):
    """u_hat float32 [B, I, J, D_out] of a DigitCaps layer for inputs u float32 [B, I, D_in]."""
    return tf.transpose(layer.votes(inputs), [0, 2, 1, 3])


def build(cfg, image_shape=(28, 28, 1), num_classes=10, num_targets=1):
    """The model of a composed train config (its `model` and `loss` groups)."""
    return build_model(cfg.model, cfg.loss, InputSpec(tuple(image_shape), num_classes, num_targets))


def bounding_box_overlap(components):
    """Per example, the area shared by the two digits' bounding boxes over the smaller box's area.
    components uint8 [M, 2, H, W, C] -> float64 [M] in [0, 1]."""
    overlaps = []
    for pair in components:
        boxes = []
        for digit in pair:
            rows, cols = np.nonzero(digit[..., 0])
            boxes.append((rows.min(), rows.max() + 1, cols.min(), cols.max() + 1))
        (t0, b0, l0, r0), (t1, b1, l1, r1) = boxes
        shared = max(0, min(b0, b1) - max(t0, t1)) * max(0, min(r0, r1) - max(l0, l1))
        overlaps.append(shared / min((b0 - t0) * (r0 - l0), (b1 - t1) * (r1 - l1)))
    return np.asarray(overlaps)


def numpy_dynamic_routing(votes, iterations, bias=None, leaky=False):
    """Procedure 1 of the paper in NumPy, one example at a time, on votes [B, J, I, D] float64;
    returns (v [B, J, D], c [B, J, I]). Options of the official code: s_j += bias_j ([J, D]) and,
    if leaky, one extra parent of logit 0 in the softmax whose share is dropped (`_leaky_routing`)."""
    batch, parents, inputs, _ = votes.shape
    all_v, all_c = [], []
    for b in range(batch):
        logits = np.zeros((parents, inputs))
        for r in range(iterations):
            padded = np.concatenate([np.zeros((1, inputs)), logits]) if leaky else logits
            exponentials = np.exp(padded - padded.max(axis=0))
            c = (exponentials / exponentials.sum(axis=0))[1 if leaky else 0:]
            s = np.einsum("ji,jid->jd", c, votes[b]) + (0 if bias is None else bias)
            v = numpy_squash(s)
            if r < iterations - 1:
                logits = logits + np.einsum("jid,jd->ji", votes[b], v)
        all_v.append(v)
        all_c.append(c)
    return np.stack(all_v), np.stack(all_c)


def numpy_squash(s, epsilon=1e-7):
    """Sabour et al. eq. 1 along the last axis, float64, with capsrun's 1e-7 under the square root
    of the length (capsrun.models.ops.EPSILON; it matters for short vectors)."""
    squared = np.sum(s * s, axis=-1, keepdims=True)
    return squared / (1.0 + squared) * s / np.sqrt(squared + epsilon)


def assert_same(fast, plain, rtol, atol_fraction):
    """Equal up to float32 round-off: atol relative to the largest magnitude of `plain`."""
    fast, plain = np.asarray(fast), np.asarray(plain)
    np.testing.assert_allclose(fast, plain, rtol=rtol, atol=atol_fraction * (np.abs(plain).max() + 1e-30))


def make_image_tree(root, classes=3, per_class=40, size=(37, 23)):
    """Class folders of RGB PNGs of an odd size; each class has its own dominant colour."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
            pixels[..., label] += 150
            Image.fromarray(pixels, "RGB").save(folder / f"{index}.png")


SMALLNORB_MAGIC = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}


def write_binary_matrix(path, array, gz=True):
    """Writes `array` (uint8 or int32) as a smallNORB binary matrix: little-endian int32 magic, ndim,
    max(ndim, 3) sizes (unused ones 1), then the elements; gzipped when `gz` (path gets `.gz`)."""
    import gzip

    array = np.ascontiguousarray(array)
    sizes = list(array.shape) + [1] * (3 - array.ndim)
    header = np.asarray([SMALLNORB_MAGIC[array.dtype], array.ndim, *sizes], "<i4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder("<")).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw, compresslevel=1) if gz else raw)
    return path


def smallnorb_info(pairs):
    """info int32 [pairs, 4] cycling through every instance, elevation, azimuth and lighting, so that a few
    dozen pairs hold every azimuth code 0, 2, .., 34 and every elevation 0..8."""
    index = np.arange(pairs)
    return np.stack([index % 10, index % 9, 2 * (index % 18), index % 6], axis=1).astype(np.int32)


def write_smallnorb(folder, pairs_per_split=40, gz=True, side=96):
    """The six smallNORB files in `folder` with `pairs_per_split` stereo pairs each, in the exact
    format. Category = index % 5; every image is a bright square on a dark background whose position
    depends on the category, the right camera's image the left one shifted by 4 pixels, so that a
    small model can learn it. Returns {"train": (dat, cat, info), "test": (...)} as written."""
    from capsrun.data.smallnorb_files import PREFIXES

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for part in ("train", "test"):
        cat = (np.arange(pairs_per_split) % 5).astype(np.int32)
        dat = rng.integers(0, 40, (pairs_per_split, 2, side, side)).astype(np.uint8)
        for index, label in enumerate(cat):
            top, left = 10 + 14 * label, 60 - 10 * label
            dat[index, 0, top:top + 24, left:left + 24] = 220
            dat[index, 1, top:top + 24, left + 4:left + 28] = 200
        info = smallnorb_info(pairs_per_split)
        for kind, array in (("dat", dat), ("cat", cat), ("info", info)):
            write_binary_matrix(folder / f"{PREFIXES[part]}-{kind}.mat", array, gz)
        written[part] = (dat, cat, info)
    return written
