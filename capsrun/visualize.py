"""`capsrun visualize run_dir=PATH`: what a trained run's digit capsules hold.

One digit per image (MNIST, affnist, ...):
reconstructions.png  test digits beside the decoder's reconstruction from the predicted capsule
perturbations.png    Figure 4 of the paper: each dimension of the winning capsule shifted over
                     [-range, +range], the decoder redrawing the digit for every shift
capsule_lengths.png  the J capsule lengths of the chosen digits
Two digits per image (MultiMNIST):
multimnist_reconstructions.png  Figure 5 of the paper: each test image above its two digits
                     reconstructed separately from the two longest capsules, in red and green
                     over the input in grey
capsule_lengths.png  the J capsule lengths of the chosen images (the two longest win)
The same figures go to the run's TensorBoard under visualize/.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
from omegaconf import MISSING, OmegaConf

from capsrun.atomic import write_bytes_atomic
from capsrun.errors import CapsrunError
from capsrun.inspection import (
    check_output_folder,
    command_config,
    restore_run,
    say,
    single_run,
    write_tensorboard,
)


@dataclass
class PerturbationConfig:
    range: float = 0.25
    step: float = 0.05


@dataclass
class VisualizeData:
    test_size: Any = None


@dataclass
class VisualizeConfig:
    """Schema of conf/visualize.yaml (the comments there explain every key)."""

    run_dir: Any = MISSING
    checkpoint: str = "best"
    indices: Optional[List[int]] = None
    num_reconstructions: int = 20
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    data: VisualizeData = field(default_factory=VisualizeData)
    output_dir: Optional[str] = None
    dpi: int = 100
    tensorboard: bool = True


def perturbation_deltas(limit, step):
    """The shifts -limit, -limit + step, ..., +limit (float32 [S]); 0.25/0.05 gives 11 values."""
    if not limit > 0 or not step > 0:
        raise CapsrunError(f"perturbation.range and perturbation.step must be > 0, got {limit} and {step}")
    count = 2.0 * limit / step
    if abs(count - round(count)) > 1e-6 or round(count) > 40:
        raise CapsrunError(f"perturbation.step={step} must divide 2 * perturbation.range={2 * limit} into at "
                           "most 40 equal steps (e.g. range=0.25 step=0.05)")
    return np.linspace(-limit, limit, int(round(count)) + 1).astype(np.float32)


def choose_indices(indices, labels, num_classes):
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


def perturbation_grids(model, images, deltas):
    """Figure 4 for a batch of digits.

    images: float32 [N, H, W, C] in [0, 1]; deltas: float32 [S].
    Returns (grids float32 [N, D, S, H, W, C], capsules float32 [N, J, D], predicted int [N]):
    grids[n, d, s] is the decoder's image when deltas[s] is added to dimension d of digit n's
    winning capsule (the other capsules are masked out, as in training).
    """
    import tensorflow as tf

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


def single_digit_figures(restored, cfg, deltas):
    """{file name: PNG bytes}: reconstructions.png, perturbations.png and capsule_lengths.png of a
    run with one digit per image."""
    from capsrun import figures
    from capsrun.evaluation import to_unit_range

    model, test = restored.model, restored.splits.test
    indices = choose_indices(None if cfg.indices is None else OmegaConf.to_container(cfg.indices),
                             test.labels, restored.num_classes)
    say(f"capsrun visualize: {restored.run_dir}: checkpoint {restored.checkpoint}, digits {indices}")
    shown = np.arange(min(cfg.num_reconstructions, len(test)))
    images = to_unit_range(test.images[shown])
    outputs = model(images, training=False)
    predicted = np.argmax(outputs["lengths"].numpy(), axis=-1)
    pngs = {"reconstructions.png": figures.to_png(figures.reconstructions_figure(
        images.numpy(), outputs["reconstructions"].numpy(), test.labels[shown], predicted, shown), cfg.dpi)}

    chosen = to_unit_range(test.images[indices]).numpy()
    grids, capsules, winners = perturbation_grids(model, chosen, deltas)
    panels = [{"grid": grid, "index": index, "label": int(test.labels[index]), "predicted": int(winner)}
              for grid, index, winner in zip(grids, indices, winners, strict=True)]
    pngs["perturbations.png"] = figures.to_png(figures.perturbations_figure(panels, deltas), cfg.dpi)
    lengths = model.lengths(capsules).numpy()
    pngs["capsule_lengths.png"] = figures.to_png(figures.capsule_lengths_figure(
        chosen, lengths, test.labels[indices], indices, restored.cfg.loss.m_plus, restored.cfg.loss.m_minus), cfg.dpi)
    return pngs


def separate_reconstructions(model, images):
    """Each digit of multi-digit images reconstructed alone, from its own capsule.

    images: float32 [N, H, W, C] in [0, 1]. Returns (reconstructions float32 [N, K, H, W, C],
    predicted int32 [N, K]: the K longest capsules in increasing class order, lengths float32
    [N, J]); reconstructions[:, k] comes from the capsule of predicted[:, k] alone.
    """
    import tensorflow as tf

    capsules = model.capsules(tf.convert_to_tensor(images), training=False)
    lengths = model.lengths(capsules)
    predicted = model.predict_labels(lengths)
    return model.reconstruct(capsules, predicted).numpy(), predicted.numpy(), lengths.numpy()


def multi_digit_figures(restored, cfg):
    """{file name: PNG bytes}: multimnist_reconstructions.png (Figure 5) of `indices` (else the
    first num_reconstructions test images) and capsule_lengths.png of `indices` (else the first
    10) for a run with several digits per image."""
    from capsrun import figures
    from capsrun.evaluation import to_unit_range

    test = restored.splits.test
    if cfg.indices is None:
        shown = list(range(min(cfg.num_reconstructions, len(test))))
        charted = shown[:10]
    else:
        shown = charted = choose_indices(OmegaConf.to_container(cfg.indices), test.labels, restored.num_classes)
    say(f"capsrun visualize: {restored.run_dir}: checkpoint {restored.checkpoint}, test images {shown}")
    images = to_unit_range(test.images[shown]).numpy()
    reconstructions, predicted, lengths = separate_reconstructions(restored.model, images)
    pngs = {"multimnist_reconstructions.png": figures.to_png(figures.multimnist_figure(
        images, reconstructions, test.labels[shown], predicted, shown), cfg.dpi)}
    count = len(charted)  # the first images of `shown`
    pngs["capsule_lengths.png"] = figures.to_png(figures.capsule_lengths_figure(
        images[:count], lengths[:count], test.labels[charted], charted, restored.cfg.loss.m_plus,
        restored.cfg.loss.m_minus), cfg.dpi)
    return pngs


def visualize_command(args):
    from capsrun.eval_run import check_dpi
    from capsrun.inspection import test_size_setting

    cfg = command_config("visualize", VisualizeConfig, args)
    if cfg is None:
        return 0
    run_dir = single_run(cfg.run_dir, "visualize")
    check_dpi(cfg.dpi)
    if cfg.num_reconstructions < 1:
        raise CapsrunError(f"num_reconstructions must be >= 1, got {cfg.num_reconstructions}")
    deltas = perturbation_deltas(cfg.perturbation.range, cfg.perturbation.step)
    test_size_setting(cfg.data.test_size, None)
    output_dir = check_output_folder(Path(cfg.output_dir).expanduser() if cfg.output_dir else run_dir)
    from capsrun import figures

    restored = restore_run(run_dir, cfg.checkpoint, cfg.data.test_size, multi_digit=True)
    if not hasattr(restored.model, "capsules"):
        raise CapsrunError(f"run {run_dir} trained a {restored.cfg.model.name}, which has no capsules to look "
                           "inside; capsrun visualize needs a CapsNet run")
    if restored.splits.num_targets == 1:
        pngs = single_digit_figures(restored, cfg, deltas)
    else:
        pngs = multi_digit_figures(restored, cfg)
    for name, png in pngs.items():
        write_bytes_atomic(output_dir / name, png)
    if cfg.tensorboard:
        write_tensorboard(run_dir, restored.step, pngs={f"visualize/{name[:-4]}": png for name, png in pngs.items()})
    for name, png in pngs.items():
        width, height = figures.png_size(png)
        print(f"wrote {output_dir / name} ({width}x{height})")
    return 0
