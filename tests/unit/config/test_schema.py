"""The train schema and its configs: every experiment composes and validates, every key is documented
and commented."""
import re

import pytest
from omegaconf import OmegaConf

from capsrun.config.keys import flat_keys
from capsrun.config.schema import Config
from capsrun.config.validation import validate
from tests.conftest import REPO, compose_config

EXPERIMENTS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
DEBUG_PRESETS = sorted(path.stem for path in (REPO / "conf" / "debug").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment, tmp_path):
    # data=smallnorb is never bundled: its experiments need a data.path (validation checks it exists)
    overrides = [f"data.path={tmp_path}"] if "smallnorb" in experiment else []
    validate(compose_config(*overrides, experiment=experiment))


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_every_debug_preset_composes_over_an_experiment_and_wins(preset):
    cfg = compose_config(f"debug={preset}", experiment="demo")
    validate(cfg)
    settings = OmegaConf.load(REPO / "conf" / "debug" / f"{preset}.yaml")
    settings.pop("hydra")
    for key in flat_keys(settings):  # every setting of the preset wins over the experiment's (debug applies last)
        assert OmegaConf.select(cfg, key) == OmegaConf.select(settings, key), key


def test_the_debug_presets_are_fast_overfit_and_profile():
    assert DEBUG_PRESETS == ["fast", "overfit", "profile"]
    assert compose_config("debug=overfit").data.train_size == compose_config("debug=overfit").batch_size
    assert compose_config("debug=profile").trainer.profile_steps == [3, 5]


def test_every_schema_key_is_in_the_configuration_page():
    readme = (REPO / "docs" / "configuration.md").read_text()
    missing = [key for key in flat_keys(OmegaConf.structured(Config)) if f"| `{key}` |" not in readme]
    assert not missing


def test_every_yaml_key_has_a_comment():
    uncommented = []
    for path in (REPO / "conf").rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped.startswith("- ") or path.parent.name in (
                    "experiment", "hparams_search"):
                continue
            if re.match(r"^[\w.]+:", stripped) and "#" not in line and not stripped.endswith(":"):
                uncommented.append(f"{path.relative_to(REPO)}:{number}")
    assert not uncommented

