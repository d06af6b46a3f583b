"""What `capsrun eval`, `visualize`, `predict` and `export` share: their command configs and
restoring a trained run (config + model + checkpoint) from its folder.

A restored run is the run's own `.hydra/config.yaml` (the user never repeats the run's
overrides), a CapsNet built from it, and the weights of one of its checkpoints
(`checkpoint=best|last|PATH`). Every problem is a CapsrunError: one line, exit code 2.
"""
import difflib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from capsrun.errors import CapsrunError

# --------------------------------------------------------------------------------------------
# Command configs
# --------------------------------------------------------------------------------------------

PATH_KEYS = {"run_dir", "images", "checkpoint", "output", "output_dir", "ensemble_file"}
"""Keys whose values are file names: quoted before Hydra parses them, so that the `=` and `,` of
a multirun job folder (`.../epochs=3,seed=1`), `~` and spaces in names need no shell quoting."""

LIST_KEYS = {"run_dir", "images"}
"""Path keys that take several values as `key=[a,b]`."""


def _quote(text):
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_paths(inner):
    """The comma-separated paths of `[...]`; commas inside existing paths (multirun job folders
    are named `a=1,b=2`) are kept: pieces are joined until they name something that exists."""
    paths, current = [], None
    for piece in inner.split(","):
        current = piece if current is None else f"{current},{piece}"
        if os.path.exists(os.path.expanduser(current.strip())):
            paths.append(current.strip())
            current = None
    if current is not None:
        pieces = current.split(",")
        paths.extend(piece.strip() for piece in pieces if piece.strip())
    return paths


def quote_paths(args):
    """`run_dir=out/seed=1` -> `run_dir='out/seed=1'`; `images=[a.png,b c.png]` -> a quoted list.

    Only the keys in PATH_KEYS are touched, and only when their value is not quoted already;
    `images=a.png` becomes a one-element list, and so does `indices=5`.
    """
    quoted = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == "indices" and value.strip().lstrip("-").isdigit():
            arg = f"indices=[{value.strip()}]"
        if not sep or key not in PATH_KEYS or value in ("", "null") or any(q in value for q in "'\""):
            quoted.append(arg)
            continue
        if key in LIST_KEYS and value.startswith("[") and value.endswith("]"):
            quoted.append(f"{key}=[{','.join(_quote(item) for item in split_paths(value[1:-1]))}]")
        elif key == "images":
            quoted.append(f"{key}=[{_quote(value)}]")
        else:
            quoted.append(f"{key}={_quote(value)}")
    return quoted


def _yaml_keys(node, prefix=""):
    from omegaconf import OmegaConf

    keys = []
    for key in node:
        value = node._get_node(key)
        if OmegaConf.is_dict(value):
            keys.extend(_yaml_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def command_config(name, schema, args):
    """The composed config of `capsrun <name>` (conf/<name>.yaml on the typed `schema`).

    `-h/--help` prints the config file (every key is commented) and returns None.
    Unknown keys name the closest valid key; a missing `run_dir` says how to pass it.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from capsrun.cli import compose
    from capsrun.config import config_dir

    ConfigStore.instance().store(name=f"{name}_schema", node=schema)
    if any(arg in ("-h", "--help") for arg in args):
        print(f"usage: capsrun {name} run_dir=PATH [key=value ...]\n")
        print((Path(config_dir()) / f"{name}.yaml").read_text())
        return None
    flags = [arg for arg in args if arg.startswith("-")]
    if flags:
        raise CapsrunError(f"unknown option {flags[0]}; capsrun {name} takes key=value settings "
                           f"(capsrun {name} --help lists them)")
    known = _yaml_keys(OmegaConf.structured(schema))
    for arg in args:
        key = arg.partition("=")[0].lstrip("+~")
        if key and not key.startswith("hydra") and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"capsrun {name} --help lists the keys"
            raise CapsrunError(f"unknown key '{key}' for capsrun {name}; {hint}")
    cfg = compose(name, quote_paths(args))
    if OmegaConf.is_missing(cfg, "run_dir") or cfg.run_dir in (None, "", []):
        raise CapsrunError(f"run_dir is required: capsrun {name} run_dir=PATH (a folder written by capsrun train)")
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            raise CapsrunError(f"{key} is required: capsrun {name} run_dir=PATH {key}=... "
                               f"(capsrun {name} --help explains it)")
    return cfg


def choice(value, allowed, key):
    """`value` (a config string or a bool parsed by Hydra) lower-cased; must be one of `allowed`."""
    text = str(value).lower()
    if text not in allowed:
        raise CapsrunError(f"{key} must be one of {', '.join(allowed)}; got '{value}'")
    return text


def test_size_setting(value, run_value):
    """The test-set size to use: `null` keeps the run's data.test_size, `all` means every test
    digit, a number N the first N."""
    if value is None:
        return run_value
    if str(value).lower() == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CapsrunError(f"data.test_size must be null (the run's), all, or a number >= 1; got '{value}'")
    return value


# --------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------

def is_run(folder):
    return (Path(folder) / ".hydra" / "config.yaml").is_file()


def expand_run_dirs(spec):
    """A run folder, a list of them, or a multirun folder (whose job folders are runs) -> the
    list of run folders (absolute Paths, no duplicates, multirun jobs in name order)."""
    from omegaconf import OmegaConf

    items = list(spec) if OmegaConf.is_list(spec) or isinstance(spec, (list, tuple)) else [spec]
    runs = []
    for item in items:
        folder = Path(os.path.expanduser(str(item))).absolute()
        if not folder.is_dir():
            raise CapsrunError(f"run folder {folder} does not exist")
        if is_run(folder):
            found = [folder]
        else:
            runs_inside = (child for child in folder.iterdir() if child.is_dir() and is_run(child))
            found = sorted(runs_inside, key=lambda path: natural_key(path.name))
            if not found:
                raise CapsrunError(f"{folder} is not a capsrun run folder (no .hydra/config.yaml) nor a multirun "
                                   "folder of runs; pass the folder that capsrun train wrote")
        runs.extend(run for run in found if run not in runs)
    return runs


def single_run(spec, command):
    """The one run folder of `run_dir=` for commands that take exactly one run."""
    runs = expand_run_dirs(spec)
    if len(runs) != 1:
        raise CapsrunError(f"capsrun {command} takes one run, got {len(runs)}; pass run_dir=ONE_RUN_FOLDER")
    return runs[0]


def natural_key(text):
    """Sort key that puts `seed=2` before `seed=10`."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def checkpoint_step(path):
    """The global step in a checkpoint prefix such as `.../ckpt-1875` (0 if it has none)."""
    suffix = str(path).rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


@dataclass
class RestoredRun:
    """A trained run, ready to use.

    run_dir: the run folder. cfg: its config (with the command's test_size applied).
    model: the CapsNet (or baseline CNN) with the checkpoint's weights (images float [B, H, W, C]
    in [0, 1]). checkpoint: the restored checkpoint prefix; step: its global step.
    splits: the run's data splits (uint8 images [N, H, W, C], int32 labels [N], or [N, K] with
    `components` [N, K, H, W, C] for K digits per image), with any `extra_tests` (affnist: "affine").
    """

    run_dir: Path
    cfg: object
    model: object
    checkpoint: str
    step: int
    splits: object

    @property
    def num_classes(self):
        return self.splits.num_classes


def load_config(run_dir, test_size=None, trainer=None):
    """The run's config on capsrun's typed schema; `test_size` as in `test_size_setting`;
    `trainer` = {key: value} replaces the run's trainer settings (devices, strategy, ...)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from capsrun.config import Config, validate
    from capsrun.runfiles import load_run_config

    saved = load_run_config(run_dir)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    except OmegaConfBaseException as error:
        detail = str(error).strip().splitlines()[0]
        raise CapsrunError(f"{run_dir}/.hydra/config.yaml does not fit this capsrun version ({detail})") from None
    cfg.data.test_size = test_size_setting(test_size, cfg.data.test_size)
    try:
        for key, value in (trainer or {}).items():
            cfg.trainer[key] = value
    except OmegaConfBaseException as error:
        raise CapsrunError(f"trainer.{key}: {str(error).strip().splitlines()[0]}") from None
    validate(cfg)
    return cfg


def quiet_tensorflow():
    """TensorFlow's Python warnings (e.g. about unrestored optimizer slots) would bury the one
    line of an error; keep only errors."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def restore_model(cfg, image_shape, num_classes, checkpoint, num_targets=1):
    """The model built from `cfg.model` for `num_targets` digits per image, with the weights of
    `checkpoint` (a prefix). Every model weight must find a saved value of the same shape, and the
    checkpoint may hold no model weight the config does not build; otherwise the config does not
    match the checkpoint (CapsrunError).
    """
    import tensorflow as tf

    from capsrun.model import build_model
    from capsrun.runfiles import restore_checkpoint, saved_variable_count

    model = build_model(cfg.model, image_shape, num_classes, num_targets)
    saved = saved_variable_count(checkpoint)
    if saved != len(model.weights):
        raise CapsrunError(f"checkpoint {checkpoint} holds {saved} model weights but this config builds "
                           f"{len(model.weights)}; it comes from a run with a different model")
    restore_checkpoint(tf.train.Checkpoint(model=model), checkpoint, partial=True)
    return model


def restore_run(run_dir, which="best", test_size=None, trainer=None, strategy=None, multi_digit=False):
    """Restores `run_dir` with its checkpoint `which` (best | last | PATH); `test_size` and
    `trainer` as in `load_config`.

    The model is built under `strategy.scope()` when a strategy is given (for distributed
    evaluation), else on the default device. A run trained on several digits per image
    (MultiMNIST) is restored only for a caller that handles them (`multi_digit=True`: eval and
    visualize; predict and export take one digit per image). Returns a RestoredRun.
    """
    from capsrun.data import load_splits
    from capsrun.runfiles import find_checkpoint

    quiet_tensorflow()
    run_dir = Path(run_dir)
    cfg = load_config(run_dir, test_size, trainer)
    path = find_checkpoint(str(run_dir), str(which))
    splits = load_splits(cfg.data, cfg.seed)
    if len(splits.test) == 0:
        raise CapsrunError(f"the test set of {run_dir} is empty; check data.path")
    if splits.num_targets != 1 and not multi_digit:
        raise CapsrunError(f"run {run_dir} was trained on images holding {splits.num_targets} digits; this "
                           "command takes one digit per image (capsrun eval and visualize handle such runs)")
    import keras

    keras.mixed_precision.set_global_policy(
        "float32" if cfg.trainer.mixed_precision == "none" else cfg.trainer.mixed_precision
    )
    if strategy is not None:
        with strategy.scope():
            model = restore_model(cfg, splits.image_shape, splits.num_classes, path, splits.num_targets)
    else:
        model = restore_model(cfg, splits.image_shape, splits.num_classes, path, splits.num_targets)
    return RestoredRun(run_dir, cfg, model, path, checkpoint_step(path), splits)


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------

def check_output_folder(folder):
    """Creates `folder` if needed; a folder that cannot be written is a CapsrunError."""
    from capsrun.atomic import unwritable_reason

    folder = Path(folder)
    reason = unwritable_reason(folder)
    if reason:
        raise CapsrunError(f"cannot write to {folder} ({reason}); choose another output folder")
    return folder


def say(message):
    """Progress for humans on stderr (stdout stays clean for tables and JSON)."""
    print(message, file=sys.stderr, flush=True)


def write_tensorboard(run_dir, step, scalars=None, pngs=None):
    """Logs {tag: number} scalars and {tag: PNG bytes} images to `run_dir/tensorboard` at `step`,
    beside the run's training curves."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(Path(run_dir) / "tensorboard"))
    with writer.as_default(step=step):
        for tag, value in (scalars or {}).items():
            tf.summary.scalar(tag, value)
        for tag, png in (pngs or {}).items():
            tf.summary.image(tag, tf.io.decode_png(png, channels=3)[None])
    writer.close()
