"""Data sets generated offline from MNIST: digits on a larger canvas and the affNIST-style
affine test set of paper section 5.2 (and MultiMNIST, paper section 6).

Everything is a deterministic function of the seed.
"""
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

CHUNK = 2048


def pad_to_canvas(images: np.ndarray, size: int) -> np.ndarray:
    """Centres uint8 images [N, H, W, C] on a black size x size canvas -> [N, size, size, C]."""
    height, width = images.shape[1:3]
    if size < max(height, width):
        raise ValueError(f"canvas {size} is smaller than the images ({height}x{width})")
    top, left = (size - height) // 2, (size - width) // 2
    canvas = np.zeros((len(images), size, size, images.shape[3]), np.uint8)
    canvas[:, top:top + height, left:left + width] = images
    return canvas


def affine_parameters(count: int, affine_cfg: Any) -> Dict[str, np.ndarray]:
    """Random affine parameters per image, uniform within the configured ranges:
    rotation in [-rotation_degrees, rotation_degrees], x-shear factor in [-shear, shear],
    scale in [scale_min, scale_max], translation in [-translation, translation] pixels per axis.
    Fixed by `affine_cfg.seed`, so every run is tested on the same set. Returns a dict of
    float64 arrays [count]."""
    rng = np.random.default_rng(affine_cfg.seed)
    return {
        "rotation_degrees": rng.uniform(-affine_cfg.rotation_degrees, affine_cfg.rotation_degrees, count),
        "shear": rng.uniform(-affine_cfg.shear, affine_cfg.shear, count),
        "scale": rng.uniform(affine_cfg.scale_min, affine_cfg.scale_max, count),
        "translate_x": rng.uniform(-affine_cfg.translation, affine_cfg.translation, count),
        "translate_y": rng.uniform(-affine_cfg.translation, affine_cfg.translation, count),
    }


def _inverse_transforms(params: Dict[str, np.ndarray], size: int) -> np.ndarray:
    """[N, 8] projective transforms mapping OUTPUT pixel coordinates to INPUT coordinates (the
    convention of ImageProjectiveTransformV3) for forward maps: translate(t) . rotate . shear .
    scale, all about the canvas centre."""
    centre = (size - 1) / 2.0
    transforms = []
    for angle, shear, scale, tx, ty in zip(np.deg2rad(params["rotation_degrees"]), params["shear"], params["scale"],
                                           params["translate_x"], params["translate_y"]):
        to_origin = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]])
        back = np.array([[1, 0, centre + tx], [0, 1, centre + ty], [0, 0, 1]])
        rotate = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        shear_matrix = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]])
        scale_matrix = np.diag([scale, scale, 1.0])
        inverse = np.linalg.inv(back @ rotate @ shear_matrix @ scale_matrix @ to_origin)
        inverse /= inverse[2, 2]
        transforms.append(inverse.reshape(-1)[:8])
    return np.asarray(transforms, np.float32)


def affine_transform(images: np.ndarray, params: Dict[str, np.ndarray]) -> np.ndarray:
    """Applies per-image affine maps (bilinear, zero fill) to uint8 images [N, S, S, C]."""
    size = images.shape[1]
    transforms = _inverse_transforms(params, size)
    out = []
    for start in range(0, len(images), CHUNK):
        batch = tf.convert_to_tensor(images[start:start + CHUNK], tf.float32)
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=batch, transforms=transforms[start:start + CHUNK], output_shape=[size, size],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
        out.append(np.clip(np.rint(warped.numpy()), 0, 255).astype(np.uint8))
    return np.concatenate(out) if out else images.copy()


def shift_on_canvas(images: np.ndarray, size: int, offsets: np.ndarray) -> np.ndarray:
    """Places uint8 images [N, H, W, C] on size x size canvases, image n with its top-left corner
    at the centre position plus offsets[n] = (dy, dx). Returns [N, size, size, C]."""
    canvas = pad_to_canvas(images, size)
    rows = (np.arange(size)[None, :] - offsets[:, :1]) % size
    cols = (np.arange(size)[None, :] - offsets[:, 1:]) % size
    canvas = np.take_along_axis(canvas, rows[:, :, None, None], axis=1)
    return np.take_along_axis(canvas, cols[:, None, :, None], axis=2)


def multimnist(images: np.ndarray, labels: np.ndarray, pairs_per_digit: int, seed: Sequence[int], size: int = 36,
               max_shift: int = 4) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MultiMNIST (paper section 6): every digit overlaid with `pairs_per_digit` digits of other
    classes from the same set, each digit shifted by up to `max_shift` pixels on a size x size
    canvas (pixel-wise maximum where they overlap).

    images uint8 [N, 28, 28, 1], labels int [N]. Returns (images uint8 [M, size, size, 1],
    labels int32 [M, 2], components uint8 [M, 2, size, size, 1]) with M = N * pairs_per_digit;
    components are the two digits alone, the targets of their separate reconstructions.
    """
    rng = np.random.default_rng(seed)
    first = np.repeat(np.arange(len(images)), pairs_per_digit)
    second = rng.integers(0, len(images), len(first))
    clash = labels[first] == labels[second]
    while clash.any():
        second[clash] = rng.integers(0, len(images), int(clash.sum()))
        clash = labels[first] == labels[second]
    offsets = rng.integers(-max_shift, max_shift + 1, (2, len(first), 2))
    components = np.stack([shift_on_canvas(images[first], size, offsets[0]),
                           shift_on_canvas(images[second], size, offsets[1])], axis=1)
    pairs = np.stack([labels[first], labels[second]], axis=1).astype(np.int32)
    return components.max(axis=1), pairs, components
