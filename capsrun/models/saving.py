"""Keras' own file format for capsrun's models: `model.save("x.keras")` and `load_model`.

Every capsrun layer and model is registered with Keras (`@keras.saving.register_keras_serializable(
package="capsrun")`, a `get_config` holding every constructor argument, the loss settings of a
CapsNet included). Keras finds a registered class only once its module has been imported, so a
program that loads a `.keras` file written by `capsrun export format=keras` imports this module
first; it imports every model of `MODELS` and every routing of `ROUTINGS` (and nothing of
training or the commands):

    import keras
    import capsrun.models.saving  # registers capsrun's layers and models with Keras
    model = keras.saving.load_model("run/model.keras")
    model(images)["scores"]       # float32 [B, J] for images float32 [B, H, W, C] in [0, 1]

A model added to the registry (or a routing to ROUTINGS) is registered here without any change;
`tests/unit/models/test_saving.py` round-trips every one of them through a `.keras` file.
"""
import importlib
from typing import Any

import keras

from capsrun.models.registry import MODELS
from capsrun.models.routing import ROUTINGS


def register_all() -> None:
    """Imports the module of every registered model and routing (their imports register the
    layers they use with Keras); importing this module does the same."""
    for module in (*MODELS.values(), *ROUTINGS.values()):
        importlib.import_module(module)


def load_model(path: Any) -> Any:
    """The capsrun model saved in the `.keras` file `path` (`keras.saving.load_model` once every
    capsrun class is registered); its weights are those of the file, ready for inference."""
    register_all()
    return keras.saving.load_model(str(path), compile=False)


register_all()
