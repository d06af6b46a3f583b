"""Hydra composition: where the configs live, the schemas registered with Hydra, composing a
config with overrides, and checking every job of a `capsrun train` command line before it runs.

Every failure is a CapsrunError with one line: the problem and, where possible, the fix.
"""
import difflib
import importlib.util
import itertools
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.hydra import Hydra  # the search path of `-cd`, as hydra.main builds it (hydra-core 1.3)
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsrun.config.keys import flat_keys, suggest_key
from capsrun.config.schema import COMMAND_SCHEMAS, Config
from capsrun.config.validation import validate
from capsrun.errors import CapsrunError

CONFIG_GROUPS = ("data", "model", "loss", "optimizer", "trainer", "convention", "experiment", "hparams_search", "debug")
MAX_CHECKED_SWEEP_JOBS = 64
"""A sweep's first 64 jobs are composed and validated before the first one starts."""

GLOB_SAFE = str.maketrans({"[": "(", "]": ")", "*": "x", "?": "_"})

PLUGIN_EXTRAS = {"hydra/launcher/submitit": "cluster", "hydra/sweeper/optuna": "optuna"}
"""Hydra plugins capsrun's configs use -> the capsrun extra that installs them."""


def glob_safe(name: str) -> str:
    """A folder name without glob characters: TensorFlow's checkpoint functions match paths as
    glob patterns, so a job folder named `model.decoder_units=[16,32]` would hide its checkpoints.
    A job without overrides in its name (`-m experiment=smoke`) gets `defaults`, not the sweep
    folder itself. Used by conf/config.yaml as ${glob_safe:${hydra.job.override_dirname}}."""
    return str(name).translate(GLOB_SAFE) or "defaults"


NAMED_GROUPS = ("experiment", "hparams_search")
"""Config groups left out of job folder names (conf/config.yaml exclude_keys), unless swept."""


def job_folder_overrides(overrides: Sequence[str]) -> List[str]:
    """Extra Hydra overrides that keep the job folders of a sweep distinct: a sweep over
    `experiment` (or `hparams_search`), which job folder names leave out, puts it back into them
    (`-m experiment=a,b seed=0,1` -> `experiment=a,seed=0`, ...). Nothing when the command line
    sets the folder names itself."""
    parsed = parse_overrides(overrides)
    if any(o.key_or_group in ("hydra.job.config.override_dirname.exclude_keys", "hydra.sweep.subdir")
           for o in parsed):
        return []
    swept = {o.key_or_group for o in parsed if o.key_or_group in NAMED_GROUPS and o.is_sweep_override()}
    if not swept:
        return []
    hydra_cfg = OmegaConf.load(Path(config_dir()) / "config.yaml").hydra
    excluded = [str(key) for key in hydra_cfg.job.config.override_dirname.exclude_keys if key not in swept]
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]"]


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


def missing_option_hint(message: str, folders: Sequence[Path] = ()) -> Optional[str]:
    """For Hydra's "Could not find 'GROUP/NAME'" about a config group: the group's options in
    capsrun's conf/ and in the user's `folders` (-cd, hydra.searchpath), and the closest one
    (Hydra's list spans several lines, which the one-line error would cut); None for any other
    message."""
    match = MISSING_OPTION.search(message)
    if match is None:
        return None
    group, name = match.groups()
    options = group_options(group, folders)
    if not options:
        return None
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    hint = f"; did you mean '{group}={close[0]}'?" if close else ""
    where = ", ".join([f"conf/{group}/", *(f"{folder}/{group}/" for folder in folders)])
    return f"invalid config: there is no {group} '{name}' ({where}); choose one of {', '.join(options)}{hint}"


def group_options(group: str, folders: Sequence[Path] = ()) -> List[str]:
    """The options of config group `group`: its YAML files in capsrun's conf/ and in `folders`."""
    names = set()
    for folder in [Path(config_dir()), *folders]:
        names.update(path.stem for path in (Path(folder) / group).glob("*.yaml"))
    return sorted(names)


SEARCH_PATH_KEY = "hydra.searchpath"


def user_config_dir(path: str) -> str:
    """`-cd DIR` / `--config-dir DIR`: the folder, absolute; one that does not exist is a
    CapsrunError."""
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise CapsrunError(f"config folder {path} (-cd/--config-dir) does not exist; pass a folder that holds "
                           "your configs, e.g. MYCONF with MYCONF/experiment/mine.yaml")
    return folder


def search_path_entries(overrides: Sequence[str]) -> List[str]:
    """The entries of a `hydra.searchpath=[file://DIR,pkg://package]` override (the last wins)."""
    entries: List[str] = []
    for override in overrides:
        if override.split("=", 1)[0] == SEARCH_PATH_KEY:
            value = parse_overrides([override])[0].value()
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise CapsrunError(f"{SEARCH_PATH_KEY} must be a list such as [file://MYCONF]; got {override}")
            entries = list(value)
    return entries


def search_path_folder(entry: str) -> Path:
    """The folder of one hydra.searchpath entry (`file://DIR`, `DIR` or `pkg://package`); one that
    does not exist is a CapsrunError (Hydra itself would only warn, then fail to find the file)."""
    scheme, sep, rest = entry.partition("://")
    if not sep:
        scheme, rest = "file", entry
    if scheme == "file":
        folder = Path(rest).expanduser()
        if not folder.is_dir():
            raise CapsrunError(f"config folder {rest} ({SEARCH_PATH_KEY}) does not exist; "
                               f"use {SEARCH_PATH_KEY}=[file://DIR] with an existing folder")
        return folder.absolute()
    if scheme == "pkg":
        try:
            spec = importlib.util.find_spec(rest)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise CapsrunError(f"config package {rest} ({SEARCH_PATH_KEY}) cannot be imported; "
                               "install it, or use file://DIR")
        return Path(list(spec.submodule_search_locations)[0])
    raise CapsrunError(f"{SEARCH_PATH_KEY} entry {entry} must start with file:// or pkg://")


def search_setup(overrides: Sequence[str], user_dir: Optional[str] = None) -> Tuple[str, Optional[str], List[Path]]:
    """(Hydra's primary config folder, the folder right after it or None, the user's folders).

    Without -cd, the primary folder is capsrun's conf/ and hydra.searchpath entries come after it
    (Hydra's order: capsrun's files win over same-named ones). With `user_dir` (-cd DIR), DIR is
    the primary folder and capsrun's conf/ comes right after it, so that DIR's files
    (config.yaml, experiment/NAME.yaml, eval.yaml, ...) take priority over capsrun's, and what DIR
    lacks is capsrun's. `capsrun train` runs Hydra in the same order: `--config-path DIR
    --config-dir <capsrun's conf>`. Every user folder must exist.
    """
    folders = [search_path_folder(entry) for entry in search_path_entries(overrides)]
    if user_dir is None:
        return config_dir(), None, folders
    return user_dir, config_dir(), [Path(user_dir), *folders]


@contextmanager
def _hydra_for(primary: str, after_primary: Optional[str]) -> Iterator[None]:
    """Hydra's compose API set up on the search path `hydra, primary, after_primary, plugins,
    schema`: the one `hydra.main` builds for `--config-path PRIMARY --config-dir AFTER_PRIMARY`."""
    with initialize_config_dir(config_dir=primary, version_base="1.3", job_name="capsrun"):
        if after_primary is not None:
            search_path = create_config_search_path(f"file://{primary}")
            search_path.prepend(provider="command-line", path=f"file://{after_primary}",
                                anchor=SearchPathQuery(provider="schema"))
            GlobalHydra.instance().clear()
            Hydra.create_main_hydra2(task_name="capsrun", config_search_path=search_path)  # the global Hydra
        yield


def compose(config_name: str, overrides: Sequence[str], user_dir: Optional[str] = None) -> DictConfig:
    """Composes `<config_name>.yaml` with overrides through Hydra's compose API: from capsrun's
    conf/, the user's folder `user_dir` (-cd DIR; its files first) and hydra.searchpath entries."""
    register_configs()
    primary, after_primary, folders = search_setup(overrides, user_dir)
    try:
        with _hydra_for(primary, after_primary):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        message = missing_option_hint(str(error), folders) or plugin_hint(f"invalid config: {one_line(error)}")
        raise CapsrunError(message) from None


def parse_overrides(overrides: Sequence[str]) -> List[Override]:
    """Hydra's parsed form of command-line overrides; a syntax error is a CapsrunError."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise CapsrunError(f"cannot parse overrides: {str(error).strip().splitlines()[0]}") from None


def check_keys(parsed: Sequence[Override], folders: Sequence[Path] = ()) -> None:
    """Unknown keys are rejected with the closest valid key; config groups are capsrun's and the
    sub-folders of the user's config folders."""
    known = flat_keys(OmegaConf.structured(Config))
    groups = set(CONFIG_GROUPS).union(path.name for folder in folders for path in folder.iterdir() if path.is_dir())
    for override in parsed:
        key = override.key_or_group
        if override.is_add() or override.is_delete() or key.startswith("hydra") or key in groups:
            continue
        if key not in known:
            raise CapsrunError(suggest_key(key, known))


def check_train_overrides(overrides: Sequence[str], user_dir: Optional[str] = None,
                          config_name: str = "config") -> List[DictConfig]:
    """Composes and validates the config of every job a `capsrun train` command line would run
    (the first MAX_CHECKED_SWEEP_JOBS of a sweep), with the user's config folders (-cd DIR,
    hydra.searchpath); returns the composed configs."""
    parsed = parse_overrides(overrides)
    _, _, folders = search_setup(overrides, user_dir)
    check_keys(parsed, folders)
    choices = []
    for override in parsed:
        if override.key_or_group.startswith("hydra"):
            if override.key_or_group in ("hydra/launcher", "hydra/sweeper", SEARCH_PATH_KEY):
                choices.append([override.input_line])  # plugins: installed? user folders: there?
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
        configs.append(compose(config_name, combination, user_dir))
        validate(configs[-1])
    return configs
