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
import sys
from pathlib import Path
from typing import List

import numpy as np

from capsrun.atomic import write_bytes_atomic
from capsrun.commands.frontend import CommandSpec, check_dpi, check_output_folder, command_config
from capsrun.config.validation import test_size_setting
from capsrun.errors import CapsrunError
from capsrun.models.base import CapsuleModel
from capsrun.training.run_folder import single_run

SPEC = CommandSpec("visualize", "run_dir=PATH [key=value ...]",
                   path_keys=frozenset({"run_dir", "checkpoint", "output_dir"}),
                   list_keys=frozenset({"run_dir"}), wrap_keys=frozenset({"indices"}),
                   required=(("run_dir", "run_dir=PATH (a folder written by capsrun train)"),))


def perturbation_deltas(limit: float, step: float) -> np.ndarray:
    """The shifts -limit, -limit + step, ..., +limit (float32 [S]); 0.25/0.05 gives 11 values."""
    if not limit > 0 or not step > 0:
        raise CapsrunError(f"perturbation.range and perturbation.step must be > 0, got {limit} and {step}")
    count = 2.0 * limit / step
    if abs(count - round(count)) > 1e-6 or round(count) > 40:
        raise CapsrunError(f"perturbation.step={step} must divide 2 * perturbation.range={2 * limit} into at "
                           "most 40 equal steps (e.g. range=0.25 step=0.05)")
    return np.linspace(-limit, limit, int(round(count)) + 1).astype(np.float32)


def visualize_command(args: List[str]) -> int:
    cfg = command_config(SPEC, args)
    if cfg is None:
        return 0
    run_dir = single_run(cfg.run_dir, "visualize")
    check_dpi(cfg.dpi)
    if cfg.num_reconstructions < 1:
        raise CapsrunError(f"num_reconstructions must be >= 1, got {cfg.num_reconstructions}")
    deltas = perturbation_deltas(cfg.perturbation.range, cfg.perturbation.step)
    test_size_setting(cfg.data.test_size, None)
    output_dir = check_output_folder(Path(cfg.output_dir).expanduser() if cfg.output_dir else run_dir)
    from capsrun.analysis import capsules, figures  # load TensorFlow and matplotlib: after the checks
    from capsrun.training.restore import restore_run
    from capsrun.training.summaries import write_to_run

    restored = restore_run(run_dir, cfg.checkpoint, cfg.data.test_size, multi_digit=True, extra_tests=False)
    if not isinstance(restored.model, CapsuleModel):
        raise CapsrunError(f"run {run_dir} trained a {restored.cfg.model.name}, which has no capsules to look "
                           "inside; capsrun visualize needs a CapsNet run")
    if restored.splits.num_targets == 1:
        pngs = capsules.single_digit_figures(restored, cfg, deltas)
        error, bar = capsules.reconstruction_check(restored)
        if error >= bar:
            print(f"capsrun visualize: warning: the reconstructions are no better than the mean training digit "
                  f"(mean squared error {error:.4f} vs {bar:.4f}): the decoder is barely trained, so the figures "
                  "show blobs; train longer (more epochs or data.train_size)", file=sys.stderr)
    else:
        pngs = capsules.multi_digit_figures(restored, cfg)
    for name, png in pngs.items():
        write_bytes_atomic(output_dir / name, png)
    if cfg.tensorboard:
        write_to_run(run_dir, restored.step, pngs={f"visualize/{name[:-4]}": png for name, png in pngs.items()})
    for name, png in pngs.items():
        width, height = figures.png_size(png)
        print(f"wrote {output_dir / name} ({width}x{height})")
    return 0
