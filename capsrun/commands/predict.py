"""`capsrun predict run_dir=PATH images=[a.png,b.jpg,batch.npy]`: classifies new digits.

Images become what the network was trained on: 28x28 grayscale, white digit on black, made the
way MNIST was (LeCun et al.): the digit is cropped to its bounding box, scaled so that its
larger side is 20 pixels (anti-aliased), and placed in a 28x28 field so that its centre of mass
sits at the field's centre (14, 14).
"""
import json
import os
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageOps, UnidentifiedImageError

from capsrun.commands.frontend import CommandSpec, choice, command_config, say
from capsrun.errors import CapsrunError
from capsrun.models.base import SCORES
from capsrun.training.run_folder import single_run

SPEC = CommandSpec("predict", "run_dir=PATH images=[a.png,b.jpg,batch.npy] [key=value ...]",
                   path_keys=frozenset({"run_dir", "images", "checkpoint"}), list_keys=frozenset({"run_dir", "images"}),
                   wrap_keys=frozenset({"images"}),
                   required=(("run_dir", "run_dir=PATH (a folder written by capsrun train)"),))

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MNIST_BOX = 20
"""MNIST digits fit a 20x20 box inside the 28x28 field."""
INK_THRESHOLD = 0.1
"""Pixels brighter than this fraction of the brightest one belong to the digit's bounding box."""


def read_image(path: Path) -> np.ndarray:
    """A PNG/JPEG file as float32 [H, W] grayscale in [0, 255]. Transparent pixels count as white
    paper (drawings exported with an alpha channel); photos are turned upright (EXIF)."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = f"cannot read {path} as an image ({reason}); pass PNG or JPEG files or a .npy batch"
        raise CapsrunError(message) from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def read_npy(path: Path) -> np.ndarray:
    """A .npy batch [N, H, W], [N, H, W, 1] or one image [H, W], uint8 in [0, 255] or float in
    [0, 1] (or [0, 255]), as float32 [N, H, W] in [0, 255]."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CapsrunError(f"cannot read {path} as a .npy array ({str(error).splitlines()[0]})") from None
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or not len(array):
        raise CapsrunError(f"{path} holds an array of shape {array.shape}; expected grayscale images [N, H, W] "
                           "or [N, H, W, 1]")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CapsrunError(f"{path} holds {array.dtype} values; expected uint8 pixels or floats in [0, 1]")
    floats = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
        raise CapsrunError(f"{path} holds values outside [0, 255]; expected uint8 pixels or floats in [0, 1]")
    return array * 255.0 if floats and array.max() <= 1.0 else array


def _border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)


def to_mnist(image: np.ndarray, invert: str = "auto", center: str = "auto", size: Tuple[int, int] = (28, 28),
             name: str = "image") -> np.ndarray:
    """float [H, W] grayscale in [0, 255] -> uint8 [size] white digit on black, MNIST-style.

    invert: auto (invert when the border is light, i.e. a dark digit on light paper) | true | false.
    center: auto (centre unless the image already has `size`: taken as it is) | true | false
    (only resize). Centring removes the paper's grey level, crops to the digit's bounding box,
    scales its larger side to 20 pixels and puts its centre of mass at the centre of the field.
    """
    image = np.asarray(image, dtype=np.float32)
    height, width = size
    if invert == "true" or (invert == "auto" and np.median(_border(image)) > 127.5):
        image = 255.0 - image
    if center == "false" or (center == "auto" and image.shape == tuple(size)):
        if image.shape != tuple(size):
            image = _resize(image, width, height)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)
    ink = np.clip(image - np.median(_border(image)), 0.0, None)
    if ink.max() < 8.0:
        raise CapsrunError(f"{name} shows no digit (it is one flat colour); pass an image of a handwritten digit")
    ink = ink * (255.0 / ink.max())
    rows = np.flatnonzero(ink.max(axis=1) > INK_THRESHOLD * 255.0)
    cols = np.flatnonzero(ink.max(axis=0) > INK_THRESHOLD * 255.0)
    crop = ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    crop = np.where(crop > INK_THRESHOLD * 255.0, crop, 0.0)
    box = min(MNIST_BOX, height, width)
    scale = box / max(crop.shape)
    new_height = max(1, min(box, int(round(crop.shape[0] * scale))))
    new_width = max(1, min(box, int(round(crop.shape[1] * scale))))
    patch = _resize(crop, new_width, new_height)
    total = patch.sum()
    centre_row = (patch.sum(axis=1) * np.arange(new_height)).sum() / total
    centre_col = (patch.sum(axis=0) * np.arange(new_width)).sum() / total
    top = int(np.clip(round(height / 2.0 - centre_row), 0, height - new_height))
    left = int(np.clip(round(width / 2.0 - centre_col), 0, width - new_width))
    field = np.zeros(size, dtype=np.float32)
    field[top: top + new_height, left: left + new_width] = patch
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)


def read_inputs(paths: Sequence[Any]) -> List[tuple]:
    """[(name, float32 [H, W] grayscale in [0, 255], from_npy)] of image files, folders of them
    and .npy batches (every entry of a batch gets the name `file[i]`)."""
    inputs = []
    for entry in paths:
        path = Path(os.path.expanduser(str(entry)))
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
            if not files:
                raise CapsrunError(f"folder {path} holds no .png, .jpg, .jpeg or .npy files")
        elif path.is_file():
            files = [path]
        else:
            raise CapsrunError(f"image {path} does not exist")
        for file in files:
            if file.suffix.lower() == ".npy":
                inputs.extend((f"{file}[{index}]", image, True) for index, image in enumerate(read_npy(file)))
            else:
                inputs.append((str(file), read_image(file), False))
    return inputs


def prepare_inputs(inputs: Sequence[tuple], image_shape: Sequence[int], invert: str,
                   center: str) -> Tuple[List[str], np.ndarray]:
    """(names, uint8 images [N, H, W, 1]) ready for a model trained on `image_shape` images.
    A .npy batch must already have the model's height and width."""
    size = tuple(image_shape[:2])
    for name, image, from_npy in inputs:
        if from_npy and image.shape != size:
            raise CapsrunError(f"{name.rsplit('[', 1)[0]} holds {image.shape[0]}x{image.shape[1]} images; "
                               f"expected [N, {size[0]}, {size[1]}] or [N, {size[0]}, {size[1]}, 1] for this run")
    images = [to_mnist(image, invert, center, size, name) for name, image, _ in inputs]
    return [name for name, _, _ in inputs], np.stack(images)[..., None]


def classify(model: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class scores float32 [N, J] of uint8 images [N, H, W, 1] (scaled to [0, 1] as in training):
    capsule lengths, or for a baseline CNN run its softmax probabilities."""
    import tensorflow as tf  # heavy: only once the inputs are read and checked

    from capsrun.data.pipeline import to_unit_range  # loads TensorFlow too

    forward = tf.function(lambda batch: model(to_unit_range(batch), training=False)[SCORES],
                          reduce_retracing=True)
    return np.concatenate([forward(images[start: start + batch_size]).numpy()
                           for start in range(0, len(images), batch_size)])


def rows_of(names: Sequence[str], lengths: np.ndarray) -> List[dict]:
    ranked = np.argsort(-lengths, axis=1, kind="stable")
    return [{"file": name, "predicted": int(order[0]), "confidence": float(row[order[0]]),
             "runner_up": int(order[1]), "runner_up_confidence": float(row[order[1]]),
             "lengths": [float(value) for value in row]}
            for name, row, order in zip(names, lengths, ranked, strict=True)]


def format_table(rows: Sequence[dict]) -> str:
    width = max(4, *(len(row["file"]) for row in rows))
    lines = [f"{'file':<{width}}  predicted  confidence  runner-up (confidence)"]
    lines += [f"{row['file']:<{width}}  {row['predicted']:>9}  {row['confidence']:>10.3f}  "
              f"{row['runner_up']:>9} ({row['runner_up_confidence']:.3f})" for row in rows]
    return "\n".join(lines)


def predict_command(args: List[str]) -> int:
    cfg = command_config(SPEC, args)
    if cfg is None:
        return 0
    invert = choice(cfg.invert, ("auto", "true", "false"), "invert")
    center = choice(cfg.center, ("auto", "true", "false"), "center")
    output = choice(cfg.output, ("table", "json"), "output")
    if cfg.batch_size < 1:
        raise CapsrunError(f"batch_size must be >= 1, got {cfg.batch_size}")
    paths = OmegaConf.to_container(cfg.images)
    if not paths:
        raise CapsrunError("images is empty; pass files, e.g. images=[digit.png] or images=batch.npy")
    run_dir = single_run(cfg.run_dir, "predict")
    inputs = read_inputs(paths)
    from capsrun.training.restore import restore_run  # loads TensorFlow: after the inputs are read

    restored = restore_run(run_dir, cfg.checkpoint, extra_tests=False)
    if restored.splits.test.preprocessing is not None:
        raise CapsrunError(f"run {run_dir} (data={restored.cfg.data.name}) takes cropped, standardised inputs, which "
                           "capsrun predict does not make yet; use capsrun eval")
    if restored.splits.image_shape[-1] != 1:
        raise CapsrunError(f"run {run_dir} was trained on {restored.splits.image_shape} images; "
                           "capsrun predict handles grayscale digits only")
    names, images = prepare_inputs(inputs, restored.splits.image_shape, invert, center)
    lengths = classify(restored.model, images, cfg.batch_size)
    rows = rows_of(names, lengths)
    say(f"capsrun predict: {len(rows)} image(s), run {run_dir}, checkpoint {restored.checkpoint}")
    if output == "json":
        print(json.dumps({"run_dir": str(run_dir), "checkpoint": restored.checkpoint, "predictions": rows}, indent=2))
    else:
        print(format_table(rows))
    return 0
