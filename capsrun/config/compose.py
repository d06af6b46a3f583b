"""Hydra composition: where the configs live, the schemas registered with Hydra, composing a
config with overrides, and checking every job of a `capsrun train` command line before it runs.

Every failure is a CapsrunError with one line: the problem and, where possible, the fix.
"""
import difflib
import itertools
import re
from pathlib import Path
from typing import List, Optional, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsrun.config.keys import flat_keys, suggest_key
from capsrun.config.schema import COMMAND_SCHEMAS, Config
from capsrun.config.validation import validate
from capsrun.errors import CapsrunError

CONFIG_GROUPS = ("data", "model", "loss", "optimizer", "trainer", "experiment", "hparams_search", "debug")
MAX_CHECKED_SWEEP_JOBS = 64
"""A sweep's first 64 jobs are composed and validated before the first one starts."""

GLOB_SAFE = str.maketrans({"[": "(", "]": ")", "*": "x", "?": "_"})

PLUGIN_EXTRAS = {"hydra/launcher/submitit": "cluster", "hydra/sweeper/optuna": "optuna"}
"""Hydra plugins capsrun's configs use -> the capsrun extra that installs them."""


def glob_safe(name: str) -> str:
    """A folder name without glob characters: TensorFlow's checkpoint functions match paths as
    glob patterns, so a job folder named `model.decoder_units=[16,32]` would hide its checkpoints.
    Used by conf/config.yaml as ${glob_safe:${hydra.job.override_dirname}}."""
    return str(name).translate(GLOB_SAFE)


def register_configs() -> None:
    """Registers the train schema as `capsrun_schema` (the first entry of conf/config.yaml's
    defaults), every command's schema as `<command>_schema`, and the `glob_safe` resolver used in
    job folder names."""
    store = ConfigStore.instance()
    store.store(name="capsrun_schema", node=Config)
    for name, schema in COMMAND_SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)
    if not OmegaConf.has_resolver("glob_safe"):
        OmegaConf.register_new_resolver("glob_safe", glob_safe)


def config_dir() -> str:
    """Absolute path of the `conf/` folder: the checkout's top-level `conf/` when run from a
    source tree (or an editable install), else the copy installed inside the package."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise CapsrunError(f"capsrun's configs are missing (looked in {package.parent / 'conf'}); reinstall capsrun")


def one_line(error: BaseException) -> str:
    """The useful lines of a Hydra/OmegaConf error (and of its cause) joined into one line."""
    if error.__cause__ is not None:
        return f"{_one_line_of(error)}: {_one_line_of(error.__cause__)}"
    return _one_line_of(error)


def _one_line_of(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    noise = ("full_key", "object_type", "reference_type", "Set the env")
    useful = [line for line in lines if not line.startswith(noise)]
    return ": ".join(useful[:2]).replace("\n", " ") if useful else type(error).__name__


def plugin_hint(message: str) -> str:
    """A config error about a missing Hydra launcher/sweeper plugin, with the pip command that
    installs it; other messages unchanged."""
    for group, extra in PLUGIN_EXTRAS.items():
        if f"Could not find '{group}" in message:
            return f"{message.split(': Available options')[0]}; install the plugin: pip install 'capsrun[{extra}]'"
    return message


MISSING_OPTION = re.compile(r"Could not find '([\w/]+)/([^']+)'")
"""Hydra's message for a config-group option that does not exist (`experiment=smok`)."""


def missing_option_hint(message: str) -> Optional[str]:
    """For Hydra's "Could not find 'GROUP/NAME'" about one of capsrun's config groups: the
    options of the group and the closest one (Hydra's list spans several lines, which the
    one-line error would cut); None for any other message."""
    match = MISSING_OPTION.search(message)
    folder = Path(config_dir()) / match.group(1) if match else None
    if folder is None or not folder.is_dir():
        return None
    group, name = match.groups()
    options = sorted(path.stem for path in folder.glob("*.yaml"))
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    hint = f"; did you mean '{group}={close[0]}'?" if close else ""
    return f"invalid config: there is no {group} '{name}' (conf/{group}/); choose one of {', '.join(options)}{hint}"


def compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Composes `conf/<config_name>.yaml` with overrides through Hydra's compose API."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="capsrun"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        message = missing_option_hint(str(error)) or plugin_hint(f"invalid config: {one_line(error)}")
        raise CapsrunError(message) from None


def parse_overrides(overrides: Sequence[str]) -> List[Override]:
    """Hydra's parsed form of command-line overrides; a syntax error is a CapsrunError."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise CapsrunError(f"cannot parse overrides: {str(error).strip().splitlines()[0]}") from None


def check_keys(parsed: Sequence[Override]) -> None:
    """Unknown keys are rejected with the closest valid key."""
    known = flat_keys(OmegaConf.structured(Config))
    for override in parsed:
        key = override.key_or_group
        if override.is_add() or override.is_delete() or key.startswith("hydra") or key in CONFIG_GROUPS:
            continue
        if key not in known:
            raise CapsrunError(suggest_key(key, known))


def check_train_overrides(overrides: Sequence[str]) -> List[DictConfig]:
    """Composes and validates the config of every job a `capsrun train` command line would run
    (the first MAX_CHECKED_SWEEP_JOBS of a sweep); returns the composed configs."""
    parsed = parse_overrides(overrides)
    check_keys(parsed)
    choices = []
    for override in parsed:
        if override.key_or_group.startswith("hydra"):
            if override.key_or_group in ("hydra/launcher", "hydra/sweeper"):  # plugins: check they are installed
                choices.append([override.input_line])
            continue
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                continue
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    configs = []
    for combination in itertools.islice(itertools.product(*choices), MAX_CHECKED_SWEEP_JOBS):
        configs.append(compose("config", combination))
        validate(configs[-1])
    return configs
