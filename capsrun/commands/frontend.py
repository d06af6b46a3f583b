"""The one front-end of every `capsrun <command>`: composing a command's config from `key=value`
arguments, `--help`, unknown options and keys, path quoting, and turning exceptions into one
line on stderr and an exit code.

Exit codes: 0 done, 2 bad input (CapsrunError), 3 training interrupted, 4 training diverged,
130 interrupted by Ctrl-C outside training.
"""
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from capsrun.atomic import unwritable_reason
from capsrun.config.compose import CONFIG_GROUPS, compose, config_dir, group_options, register_configs, user_config_dir
from capsrun.config.keys import flat_keys, suggest_key
from capsrun.config.schema import COMMAND_SCHEMAS
from capsrun.errors import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CapsrunError,
    TrainingDiverged,
    TrainingInterrupted,
)

log = logging.getLogger("capsrun")

EXIT_CTRL_C = 130


@dataclass(frozen=True)
class CommandSpec:
    """How a command reads its `key=value` arguments.

    name: the command (conf/<name>.yaml, schema COMMAND_SCHEMAS[name]); usage: the argument
    synopsis after `capsrun <name>`; path_keys: keys whose values are file names, quoted before
    Hydra parses them so that the `=` and `,` of a multirun job folder (`.../epochs=3,seed=1`),
    `~` and spaces need no shell quoting; list_keys: path keys that take several values as
    `key=[a,b]`; wrap_keys: list keys whose single value becomes a one-element list
    (`images=a.png`, `indices=5`); required: keys that must be set, with the way to set them.
    """

    name: str
    usage: str
    path_keys: FrozenSet[str] = frozenset()
    list_keys: FrozenSet[str] = frozenset()
    wrap_keys: FrozenSet[str] = frozenset()
    required: tuple = ()
    groups: FrozenSet[str] = frozenset()


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_paths(inner: str) -> List[str]:
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


def quote_paths(args: Sequence[str], spec: CommandSpec) -> List[str]:
    """`run_dir=out/seed=1` -> `run_dir='out/seed=1'`; `images=[a.png,b c.png]` -> a quoted list.

    Only the spec's path keys are touched, and only when their value is not quoted already; a
    single value of a wrap key becomes a one-element list (`images=a.png`, `indices=5`).
    """
    quoted = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if key in spec.wrap_keys and key not in spec.path_keys and value.strip().lstrip("-").isdigit():
            arg = f"{key}=[{value.strip()}]"
        if not sep or key not in spec.path_keys or value in ("", "null") or any(q in value for q in "'\""):
            quoted.append(arg)
            continue
        if key in spec.list_keys and value.startswith("[") and value.endswith("]"):
            quoted.append(f"{key}=[{','.join(_quote(item) for item in split_paths(value[1:-1]))}]")
        elif key in spec.wrap_keys:
            quoted.append(f"{key}=[{_quote(value)}]")
        else:
            quoted.append(f"{key}={_quote(value)}")
    return quoted


VERBOSE_HELP = "--verbose           TensorFlow's start-up lines too (hidden by default; or CAPSRUN_VERBOSE=1)"


def help_text(spec: CommandSpec, user_dir: Optional[str] = None) -> str:
    """`capsrun <command> --help`: the synopsis, the command's config file (the user's, with
    -cd DIR holding one), whose comments explain every key, and the options."""
    path = Path(user_dir or config_dir()) / f"{spec.name}.yaml"
    text = (path if path.is_file() else Path(config_dir()) / f"{spec.name}.yaml").read_text()
    options = f"""options:
  -h, --help          this help
  --cfg job           print the composed config (the file above with your key=value settings) and exit
  -cd DIR             read DIR/{spec.name}.yaml instead of capsrun's if it exists (DIR's configs first,
                      capsrun's for the rest; also --config-dir DIR)
  {VERBOSE_HELP}"""
    return f"usage: capsrun {spec.name} {spec.usage}\n\n{text.rstrip()}\n\n{options}"


def train_help(user_dir: Optional[str] = None) -> str:
    """`capsrun train --help`: the top-level keys, the config groups with their options, and
    what -m, resume=, -cd, --cfg and --hydra-help do."""
    folders = [Path(user_dir)] if user_dir else []
    primary = Path(user_dir) / "config.yaml" if user_dir else None
    primary = primary if primary is not None and primary.is_file() else Path(config_dir()) / "config.yaml"
    text = primary.read_text()
    keys = [f"  {line.rstrip()}" for line in text.split("\nhydra:")[0].splitlines()
            if line and not line[0].isspace() and not line.startswith(("#", "defaults:", "hydra:"))]
    defaults = {}
    for item in OmegaConf.load(primary).get("defaults", []):
        if isinstance(item, (dict, DictConfig)):
            defaults.update({str(k): v for k, v in item.items()})
    groups = []
    for group in [*CONFIG_GROUPS, *(g for g in defaults if g not in CONFIG_GROUPS and "/" not in g)]:
        options = group_options(group, folders)
        if options:
            chosen = defaults.get(group)
            groups.append(f"  {group + '=':16}{', '.join(options)}  (default: {chosen or 'none'})")
    return "\n".join([
        "usage: capsrun train [-m] [-cd DIR] [key=value ...]",
        "",
        f"Trains a CapsNet in a new run folder (outputs/DATE/TIME). The config is {primary}",
        "with its groups; every key=value overrides one key of it.",
        "",
        "main keys:",
        *keys,
        "",
        "config groups (GROUP=OPTION picks conf/GROUP/OPTION.yaml; each key there is commented):",
        *groups,
        "  their keys:     data.*, model.*, loss.*, optimizer.*, trainer.* (e.g. model.routing_iterations=1;",
        "                  every key is in docs/configuration.md)",
        "",
        "options:",
        "  -m, --multirun      a sweep: one job per combination, e.g. -m model.routing_iterations=1,3 seed=0,1,2",
        "                      (outputs/multirun/DATE/TIME/<overrides>/; every job is checked before the first)",
        "  resume=RUN_DIR      continue that run from its last checkpoint, in its folder, with its overrides and",
        "                      config folders (later ones apply on top, e.g. resume=RUN_DIR epochs=20)",
        "  -cd DIR             your own config folder (also --config-dir DIR): DIR's files (experiment/NAME.yaml,",
        "                      config.yaml, ...) take priority over capsrun's, which fill in the rest",
        "  hydra.searchpath=[file://DIR]  more config folders, after capsrun's (Hydra's order; pkg://PACKAGE too)",
        "  --cfg job           print the composed config with your overrides and exit (--cfg hydra: Hydra's part)",
        "  --info searchpath   where configs are read from (--info: Hydra's whole view)",
        "  --hydra-help        Hydra's own help (its flags, hydra.* settings and plugins)",
        "  -h, --help          this help",
        f"  {VERBOSE_HELP}",
        "",
        "examples:",
        "  capsrun train experiment=smoke",
        "  capsrun train epochs=50 model.routing_iterations=1",
        "  capsrun train -m experiment=table1",
        "  capsrun train -cd myconf experiment=mine --cfg job",
        "  capsrun train resume=outputs/2026-11-28/10-00-00 epochs=20",
    ])


def command_flags(spec: CommandSpec, args: Sequence[str]) -> Tuple[dict, List[str]]:
    """({'help': bool, 'cfg': bool, 'user_dir': folder or None}, the key=value settings) of the
    arguments; options other than -h/--help, --cfg [job] and -cd/--config-dir DIR are refused."""
    options: dict = {"help": False, "cfg": False, "user_dir": None}
    settings, index = [], 0
    while index < len(args):
        arg = args[index]
        name, _, attached = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg in ("-h", "--help"):
            options["help"] = True
        elif arg in ("--cfg", "-c"):
            options["cfg"] = True
            index += 1 if index + 1 < len(args) and args[index + 1] == "job" else 0
        elif name in ("-cd", "--config-dir"):
            if not attached and (index + 1 >= len(args) or args[index + 1].startswith("-")):
                raise CapsrunError(f"{name} needs a folder: capsrun {spec.name} -cd MYCONF ...")
            if not attached:
                index += 1
            options["user_dir"] = user_config_dir(attached or args[index])
        elif arg.startswith("-"):
            raise CapsrunError(f"unknown option {arg}; capsrun {spec.name} takes key=value settings "
                               f"(capsrun {spec.name} --help lists them)")
        else:
            settings.append(arg)
        index += 1
    return options, settings


def command_config(spec: CommandSpec, args: Sequence[str]) -> Optional[DictConfig]:
    """The composed, typed config of `capsrun <spec.name> ARGS`, or None after printing --help
    (or the composed config, for --cfg job).

    Options other than -h/--help, --cfg and -cd DIR are rejected; unknown keys name the closest
    valid key; a required key that is missing says how to pass it.
    """
    if any(arg in ("-h", "--help") for arg in args):
        user_dirs = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in ("-cd", "--config-dir")]
        print(help_text(spec, user_config_dir(user_dirs[-1]) if user_dirs else None))
        return None
    options, args = command_flags(spec, args)
    register_configs()
    known = flat_keys(OmegaConf.structured(COMMAND_SCHEMAS[spec.name]))
    for arg in args:
        key, sep, _ = arg.partition("=")
        key = key.lstrip("+~")
        if not sep:
            raise CapsrunError(f"'{arg}' is not a key=value setting; capsrun {spec.name} --help lists the keys")
        if not key.startswith("hydra") and key not in known and key not in spec.groups:
            raise CapsrunError(suggest_key(key, known, spec.name))
    cfg = compose(spec.name, quote_paths(args, spec), options["user_dir"])
    if options["cfg"]:
        print(OmegaConf.to_yaml(cfg), end="")
        return None
    for key, how in spec.required:
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, "", []):
            raise CapsrunError(f"{key} is required: capsrun {spec.name} {how}")
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            raise CapsrunError(f"{key} is required: capsrun {spec.name} {key}=... (capsrun {spec.name} --help "
                               "explains it)")
    return cfg


def choice(value: object, allowed: Sequence[str], key: str) -> str:
    """`value` (a config string or a bool parsed by Hydra) lower-cased; must be one of `allowed`."""
    text = str(value).lower()
    if text not in allowed:
        raise CapsrunError(f"{key} must be one of {', '.join(allowed)}; got '{value}'")
    return text


def check_dpi(dpi: int) -> None:
    if not 20 <= dpi <= 600:
        raise CapsrunError(f"dpi must be in [20, 600], got {dpi}")


def check_output_folder(folder: os.PathLike) -> Path:
    """Creates `folder` if needed; a folder that cannot be written is a CapsrunError."""
    folder = Path(folder)
    reason = unwritable_reason(folder)
    if reason:
        raise CapsrunError(f"cannot write to {folder} ({reason}); choose another output folder")
    return folder


def say(message: str) -> None:
    """Progress for humans on stderr (stdout stays clean for tables and JSON)."""
    log.info(message)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message is logged."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def log_progress_to_stderr() -> None:
    """capsrun's log messages (progress of eval, visualize, report, bench, ...) as plain lines on
    stderr. Not for `train`, whose logging Hydra configures (console and train.log)."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def error_line(command: str, error: BaseException) -> str:
    """The one line a failed command prints on stderr."""
    return f"capsrun {command}: error: {error}"


def exit_code(command: str, error: BaseException) -> int:
    """Reports `error` of `command` in one line; returns its exit code. An interrupted run is a
    logged warning (into the run's train.log too; it can be resumed), the rest errors on stderr."""
    if isinstance(error, TrainingInterrupted):
        log.warning("%s", error)
        return EXIT_INTERRUPTED
    print(error_line(command, error), file=sys.stderr, flush=True)
    return EXIT_DIVERGED if isinstance(error, TrainingDiverged) else EXIT_USAGE


def run(command: str, function: Callable[[List[str]], int], args: Sequence[str]) -> int:
    """Runs `function(args)` of `command`; every failure capsrun expects becomes one line on
    stderr and its exit code, never a traceback."""
    try:
        return function(list(args))
    except (CapsrunError, TrainingInterrupted, TrainingDiverged) as error:
        return exit_code(command, error)
    except KeyboardInterrupt:
        print(f"capsrun {command}: interrupted", file=sys.stderr)
        return EXIT_CTRL_C
