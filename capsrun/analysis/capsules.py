"""What a trained CapsNet's class capsules hold, as the figures of `capsrun visualize` (the
engine of that command): reconstructions, Figure 4's perturbations of each capsule dimension,
capsule lengths, and Figure 5's separate reconstructions of multi-digit images.

Shapes: N images, J classes, D capsule dimensions, S perturbation steps, T digits per image.
"""
import logging
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from capsrun.analysis import figures
from capsrun.analysis.metrics import mean_image_error
from capsrun.data.pipeline import model_inputs, to_unit_range
from capsrun.errors import CapsrunError
from capsrun.models.base import RECONSTRUCTIONS, SCORES, CapsuleModel
from capsrun.training.restore import RestoredRun

log = logging.getLogger(__name__)


def choose_indices(indices: Optional[List[int]], labels: np.ndarray, num_classes: int) -> List[int]:
    """The requested test indices (checked), or the first test digit of every class present."""
    if indices is None:
        return [int(np.flatnonzero(labels == k)[0]) for k in range(num_classes) if np.any(labels == k)]
    indices = list(indices)
    if not indices:
        raise CapsrunError("indices is empty; pass test-set indices such as indices=[0,1,2] or indices=null")
    if len(indices) > 20:
        raise CapsrunError(f"{len(indices)} indices are too many for one figure; pass at most 20")
    for index in indices:
        if not 0 <= index < len(labels):
            raise CapsrunError(f"index {index} is out of range: the test set has {len(labels)} digits "
                               f"(0..{len(labels) - 1}); pass a smaller index or data.test_size=all")
    return [int(index) for index in indices]


def perturbation_grids(model: CapsuleModel, images: np.ndarray, deltas: np.ndarray) -> tuple:
    """Figure 4 for a batch of digits.

    images: float32 [N, H, W, C] in [0, 1]; deltas: float32 [S].
    Returns (grids float32 [N, D, S, H, W, C], capsules float32 [N, J, D], predicted int [N]):
    grids[n, d, s] is the decoder's image when deltas[s] is added to dimension d of digit n's
    winning capsule (the other capsules are masked out, as in training).
    """
    capsules = model.capsules(tf.convert_to_tensor(images), training=False)
    predicted = tf.argmax(model.lengths(capsules), axis=-1, output_type=tf.int32)
    count, _, dims = capsules.shape
    steps = len(deltas)
    winner = tf.one_hot(predicted, model.num_classes, dtype=tf.float32)           # [N, J]
    shifts = tf.eye(dims)[:, None, :] * tf.constant(deltas)[None, :, None]       # [D, S, D]
    tweaks = winner[:, None, None, :, None] * shifts[None, :, :, None, :]        # [N, D, S, J, D]
    tweaked = capsules[:, None, None] + tweaks
    flat = tf.reshape(tweaked, [count * dims * steps, model.num_classes, dims])
    labels = tf.repeat(predicted, dims * steps)
    images_out = model.reconstruct(flat, labels)
    grids = tf.reshape(images_out, [count, dims, steps, *images_out.shape[1:]])
    return grids.numpy(), capsules.numpy(), predicted.numpy()


def single_digit_figures(restored: RestoredRun, cfg: DictConfig, deltas: np.ndarray) -> Dict[str, bytes]:
    """{file name: PNG bytes}: reconstructions.png, perturbations.png and capsule_lengths.png of a
    run with one digit per image."""
    model, test = restored.model, restored.splits.test
    indices = choose_indices(None if cfg.indices is None else OmegaConf.to_container(cfg.indices),
                             test.labels, restored.num_classes)
    log.info(f"capsrun visualize: {restored.run_dir}: checkpoint {restored.checkpoint}, digits {indices}")
    shown = np.arange(min(cfg.num_reconstructions, len(test)))
    images = model_inputs(test, shown)
    outputs = model(images, training=False)
    predicted = np.argmax(outputs[SCORES].numpy(), axis=-1)
    pngs = {"reconstructions.png": figures.to_png(figures.reconstructions_figure(
        images.numpy(), outputs[RECONSTRUCTIONS].numpy(), test.labels[shown], predicted, shown), cfg.dpi)}

    chosen = model_inputs(test, np.asarray(indices)).numpy()
    grids, capsules, winners = perturbation_grids(model, chosen, deltas)
    panels = [{"grid": grid, "index": index, "label": int(test.labels[index]), "predicted": int(winner)}
              for grid, index, winner in zip(grids, indices, winners, strict=True)]
    pngs["perturbations.png"] = figures.to_png(figures.perturbations_figure(panels, deltas), cfg.dpi)
    lengths = model.lengths(capsules).numpy()
    pngs["capsule_lengths.png"] = figures.to_png(figures.capsule_lengths_figure(
        chosen, lengths, test.labels[indices], indices, restored.cfg.loss.m_plus, restored.cfg.loss.m_minus), cfg.dpi)
    return pngs


RECONSTRUCTION_CHECK_IMAGES = 256
"""Test digits behind visualize's reconstruction check: one forward pass (about a second for the
CapsNet on 2 CPU cores), and enough digits that the verdict does not hinge on a few of them."""


def reconstruction_check(restored: RestoredRun, count: int = RECONSTRUCTION_CHECK_IMAGES) -> tuple:
    """(reconstruction error, mean-digit error) of the first `count` test digits, each the mean
    squared error per pixel: the decoder's reconstructions from the predicted capsule against
    predicting the mean training digit for all of them (`capsrun.analysis.metrics.mean_image_error`).
    A first error not below the second means the decoder has learned nothing about the digits."""
    test, train = restored.splits.test, restored.splits.train
    raw = test.images[:count]
    images = model_inputs(test, np.arange(min(count, len(test))))
    outputs = restored.model(images, training=False)
    error = float(tf.reduce_mean(tf.square(tf.cast(outputs[RECONSTRUCTIONS], tf.float32) - images)))
    if test.preprocessing is None:
        return error, mean_image_error(train.images, raw)
    # preprocessed inputs (smallNORB's standardised crops): the mean of as many training inputs
    mean = model_inputs(train, np.arange(min(count, len(train)))).numpy().mean(axis=0)
    return error, float(np.mean(np.square(images.numpy() - mean)))


def separate_reconstructions(model: CapsuleModel, images: np.ndarray) -> tuple:
    """Each digit of multi-digit images reconstructed alone, from its own capsule.

    images: float32 [N, H, W, C] in [0, 1]. Returns (reconstructions float32 [N, K, H, W, C],
    predicted int32 [N, K]: the K longest capsules in increasing class order, lengths float32
    [N, J]); reconstructions[:, k] comes from the capsule of predicted[:, k] alone.
    """
    capsules = model.capsules(tf.convert_to_tensor(images), training=False)
    lengths = model.lengths(capsules)
    predicted = model.predict_labels(lengths)
    return model.reconstruct(capsules, predicted).numpy(), predicted.numpy(), lengths.numpy()


def multi_digit_figures(restored: RestoredRun, cfg: DictConfig) -> Dict[str, bytes]:
    """{file name: PNG bytes}: multimnist_reconstructions.png (Figure 5) of `indices` (else the
    first num_reconstructions test images) and capsule_lengths.png of `indices` (else the first
    10) for a run with several digits per image."""
    test = restored.splits.test
    if cfg.indices is None:
        shown = list(range(min(cfg.num_reconstructions, len(test))))
        charted = shown[:10]
    else:
        shown = charted = choose_indices(OmegaConf.to_container(cfg.indices), test.labels, restored.num_classes)
    log.info(f"capsrun visualize: {restored.run_dir}: checkpoint {restored.checkpoint}, test images {shown}")
    images = to_unit_range(test.images[shown]).numpy()
    reconstructions, predicted, lengths = separate_reconstructions(restored.model, images)
    pngs = {"multimnist_reconstructions.png": figures.to_png(figures.multimnist_figure(
        images, reconstructions, test.labels[shown], predicted, shown), cfg.dpi)}
    count = len(charted)  # the first images of `shown`
    pngs["capsule_lengths.png"] = figures.to_png(figures.capsule_lengths_figure(
        images[:count], lengths[:count], test.labels[charted], charted, restored.cfg.loss.m_plus,
        restored.cfg.loss.m_minus), cfg.dpi)
    return pngs
