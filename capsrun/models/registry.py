"""Models by name. Adding a model is one module (with a `build(model_cfg, loss_cfg, spec)`
function returning a built model on the contract of `capsrun.models.base`), one YAML file in
conf/model/ and one line below.

This module imports no TensorFlow: config validation reads MODELS without loading any model.
"""
import importlib
from typing import Any

from capsrun.models.base import InputSpec

MODELS = {
    "capsnet": "capsrun.models.capsnet",  # Sabour et al. 2017 (conf/model/capsnet.yaml)
    "baseline_cnn": "capsrun.models.baseline_cnn",  # the paper's baseline CNN (conf/model/baseline_cnn.yaml)
    "efficient_capsnet": "capsrun.models.efficient_capsnet",  # Mazzia et al. 2021 (conf/model/efficient_capsnet.yaml)
    "em_capsnet": "capsrun.models.em_capsnet",  # Hinton et al. 2018, EM routing (conf/model/em_capsnet.yaml)
}
"""`model.name` -> the module whose `build` function builds it (imported when a model is built)."""


def build_model(model_cfg: Any, loss_cfg: Any, spec: InputSpec) -> Any:
    """The built model named by `model_cfg.name`, for the `model` and `loss` config groups and
    the data's InputSpec (image shape, classes, objects per image)."""
    if model_cfg.name not in MODELS:
        raise ValueError(f"unknown model '{model_cfg.name}'; choose one of {', '.join(MODELS)}")
    return importlib.import_module(MODELS[model_cfg.name]).build(model_cfg, loss_cfg, spec)
