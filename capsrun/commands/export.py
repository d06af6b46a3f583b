"""`capsrun export run_dir=PATH`: the run's model as a TensorFlow SavedModel.

The SavedModel needs neither capsrun nor Keras to serve:

    model = tf.saved_model.load(path)
    out = model.signatures["serving_default"](images=tf.zeros([1, 28, 28, 1]))
    out["lengths"]          # float32 [B, J], capsule lengths (class confidences)
    out["predicted_class"]  # int32 [B]

`assets.extra/capsrun.json` inside the folder records the run, checkpoint and input format.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Sequence

from capsrun.commands.frontend import CommandSpec, command_config, say
from capsrun.errors import CapsrunError
from capsrun.models.base import SCORES
from capsrun.training.run_folder import single_run

SPEC = CommandSpec("export", "run_dir=PATH [key=value ...]", path_keys=frozenset({"run_dir", "checkpoint", "output"}),
                   list_keys=frozenset({"run_dir"}),
                   required=(("run_dir", "run_dir=PATH (a folder written by capsrun train)"),))


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


def export_command(args: List[str]) -> int:
    cfg = command_config(SPEC, args)
    if cfg is None:
        return 0
    run_dir = single_run(cfg.run_dir, "export")
    output = Path(cfg.output).expanduser() if cfg.output else run_dir / "saved_model"
    if output.exists() and not cfg.overwrite:
        raise CapsrunError(f"{output} already exists; pass overwrite=true or output=ANOTHER_FOLDER")
    from capsrun.training.restore import restore_run  # loads TensorFlow: after the checks

    restored = restore_run(run_dir, cfg.checkpoint)
    say(f"capsrun export: {run_dir}: checkpoint {restored.checkpoint}")
    path = export_saved_model(restored, output, cfg.overwrite)
    print(f"wrote SavedModel {path} (signature serving_default: images float32 "
          f"[batch, {', '.join(map(str, restored.splits.image_shape))}] in [0, 1] -> lengths, predicted_class)")
    return 0
