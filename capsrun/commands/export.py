"""`capsrun export run_dir=PATH [format=saved_model|keras]`: the run's model as a TensorFlow
SavedModel (the default) or as a Keras `.keras` file.

The SavedModel needs neither capsrun nor Keras to serve:

    model = tf.saved_model.load(path)
    out = model.signatures["serving_default"](images=tf.zeros([1, 28, 28, 1]))
    out["lengths"]          # float32 [B, J], capsule lengths (class confidences)
    out["predicted_class"]  # int32 [B]

`assets.extra/capsrun.json` inside the folder records the run, checkpoint and input format.

The `.keras` file (`format=keras`, default `<run>/model.keras`) is the model itself, for Keras
programs that import capsrun's model layers (`capsrun.models.saving`), not the trainer:

    import capsrun.models.saving, keras
    model = keras.saving.load_model("run/model.keras")
    model(images)["scores"]  # float32 [B, J]
"""
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, List, Sequence

from capsrun.commands.frontend import CommandSpec, choice, command_config, say
from capsrun.errors import CapsrunError
from capsrun.models.base import SCORES
from capsrun.training.run_folder import single_run

SPEC = CommandSpec("export", "run_dir=PATH [key=value ...]", path_keys=frozenset({"run_dir", "checkpoint", "output"}),
                   list_keys=frozenset({"run_dir"}),
                   required=(("run_dir", "run_dir=PATH (a folder written by capsrun train)"),))
FORMATS = ("saved_model", "keras")
DEFAULT_OUTPUT = {"saved_model": "saved_model", "keras": "model.keras"}
"""`format` -> the output's name in the run folder when `output` is null."""


def serving_module(model: Any, image_shape: Sequence[int]) -> Any:
    """A tf.Module whose `serve(images)` maps float32 [B, H, W, C] images in [0, 1] to
    {"lengths": float32 [B, J] (the model's class scores: capsule lengths for a CapsNet),
    "predicted_class": int32 [B]}. The model's variables are listed explicitly so that the
    SavedModel holds all of them."""
    import tensorflow as tf  # heavy: only once the command's inputs are checked

    class CapsNetServing(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="capsnet_serving")
            self.model = model
            self.weights = list(model.variables)

        @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="images")])
        def serve(self, images):
            lengths = tf.cast(model(images, training=False)[SCORES], tf.float32)
            return {"lengths": lengths, "predicted_class": tf.argmax(lengths, axis=-1, output_type=tf.int32)}

    return CapsNetServing()


def export_saved_model(restored: Any, output: Path, overwrite: bool = False) -> Path:
    """Writes the SavedModel of a RestoredRun to `output` (a folder), atomically: it is built in
    a temporary folder beside `output` and renamed into place."""
    import tensorflow as tf  # heavy: only once the command's inputs are checked

    output = Path(output)
    if output.exists() and not overwrite:
        raise CapsrunError(f"{output} already exists; pass overwrite=true or output=ANOTHER_FOLDER")
    if output.exists() and not (output / "saved_model.pb").is_file():
        raise CapsrunError(f"{output} exists and is not a SavedModel; refusing to replace it, choose another output")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    except OSError as error:
        raise CapsrunError(f"cannot write to {output.parent} ({error.strerror}); choose another output") from None
    try:
        module = serving_module(restored.model, restored.splits.image_shape)
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
        (staging / "assets.extra").mkdir(exist_ok=True)
        (staging / "assets.extra" / "capsrun.json").write_text(json.dumps({
            "run_dir": str(restored.run_dir),
            "checkpoint": restored.checkpoint,
            "step": restored.step,
            "signature": "serving_default",
            "input": {"images": {"dtype": "float32", "shape": [None, *restored.splits.image_shape],
                                 "range": [0.0, 1.0], "format": "white digit on black, MNIST-centred"}},
            "outputs": {"lengths": "float32 [batch, classes]", "predicted_class": "int32 [batch]"},
            "num_classes": restored.num_classes,
        }, indent=2) + "\n")
        if output.exists():
            retired = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old-"))
            os.replace(output, retired / output.name)
            os.replace(staging, output)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output


def check_keras_output(output: Path, overwrite: bool) -> None:
    """The rules for a `.keras` output: the name ends in `.keras` (Keras insists), an existing file
    is replaced only with overwrite=true, and only if it is a `.keras` file (a zip archive)."""
    if output.suffix != ".keras":
        raise CapsrunError(f"output={output} must end in .keras for format=keras; e.g. output={output}.keras")
    if output.exists() and not overwrite:
        raise CapsrunError(f"{output} already exists; pass overwrite=true or output=ANOTHER_FILE.keras")
    if output.exists() and not (output.is_file() and zipfile.is_zipfile(output)):
        raise CapsrunError(f"{output} exists and is not a .keras file; refusing to replace it, choose another output")


def export_keras(restored: Any, output: Path, overwrite: bool = False) -> Path:
    """Writes the model of a RestoredRun as the `.keras` file `output`, atomically: it is saved
    to a temporary file beside `output` and renamed into place."""
    output = Path(output)
    check_keras_output(output, overwrite)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.tmp-", suffix=".keras")
        os.close(handle)
    except OSError as error:
        raise CapsrunError(f"cannot write to {output.parent} ({error.strerror}); choose another output") from None
    staging = Path(name)
    try:
        restored.model.save(staging, overwrite=True)
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return output


def export_command(args: List[str]) -> int:
    cfg = command_config(SPEC, args)
    if cfg is None:
        return 0
    kind = choice(cfg.format, FORMATS, "format")
    run_dir = single_run(cfg.run_dir, "export")
    output = Path(cfg.output).expanduser() if cfg.output else run_dir / DEFAULT_OUTPUT[kind]
    if kind == "keras":
        check_keras_output(output, cfg.overwrite)
    elif output.exists() and not cfg.overwrite:
        raise CapsrunError(f"{output} already exists; pass overwrite=true or output=ANOTHER_FOLDER")
    from capsrun.training.restore import restore_run  # loads TensorFlow: after the checks

    restored = restore_run(run_dir, cfg.checkpoint, extra_tests=False)
    say(f"capsrun export: {run_dir}: checkpoint {restored.checkpoint}")
    shape = ", ".join(map(str, restored.splits.image_shape))
    if kind == "keras":
        path = export_keras(restored, output, cfg.overwrite)
        print(f"wrote Keras model {path} (import capsrun.models.saving, then keras.saving.load_model; "
              f"images float32 [batch, {shape}] in [0, 1] -> outputs['scores'])")
        return 0
    path = export_saved_model(restored, output, cfg.overwrite)
    print(f"wrote SavedModel {path} (signature serving_default: images float32 "
          f"[batch, {shape}] in [0, 1] -> lengths, predicted_class)")
    return 0
