"""`capsrun train [overrides]`: thin Hydra glue around `capsrun.training.trainer.train(cfg, run_dir)`.

Every job of the command line is composed and validated before Hydra writes anything
(`check_train_overrides`); `resume=RUN_DIR` continues a run with its own overrides. Inside a
job, the Trainer's exceptions become exit codes: CapsrunError 2, TrainingInterrupted 3,
TrainingDiverged 4.
"""
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from capsrun.atomic import write_bytes_atomic
from capsrun.commands.frontend import exit_code, train_help
from capsrun.config.compose import (
    check_train_overrides,
    config_dir,
    job_folder_overrides,
    register_configs,
    user_config_dir,
)
from capsrun.config.schema import Config
from capsrun.errors import EXIT_USAGE, CapsrunError, TrainingDiverged, TrainingInterrupted
from capsrun.training.history import read_metrics
from capsrun.training.run_folder import (
    CHECKPOINT_KINDS,
    METRICS,
    load_run_config,
    load_run_config_sources,
    load_run_overrides,
)
from capsrun.training.sweeps import end_job, job_hparams, start_job

INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
FLAG_VALUES = {flag: None for flag in ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                                       "-cn", "--config-dir", "-cd", "--experimental-rerun")}
FLAG_VALUES.update({"--info": INFO_CHOICES, "-i": INFO_CHOICES})
"""Hydra flags that take a value (None: any value; else the value is optional, one of these)."""

INFORMATIONAL = {"--cfg", "-c", "--info", "--hydra-help", "--shell-completion", "-sc"}
"""Hydra flags that print and exit: the overrides are not checked, nothing runs. (`-h`/`--help`
print capsrun's own help; Hydra's is `--hydra-help`.)"""

HYDRA_FLAGS = {*FLAG_VALUES, *INFORMATIONAL, "-h", "--help", "-m", "--multirun", "--resolve", "-r", "--run",
               "--version"}
"""Every flag Hydra's command line knows; anything else starting with - is a mistake."""


def split_args(args: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(Hydra flags such as -m/--cfg with their values, config overrides), in any order:
    `capsrun train epochs=5 --cfg job` keeps `--cfg job` together."""
    flags, overrides, index = [], [], 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("-"):
            overrides.append(arg)
        elif "=" in arg and arg.split("=", 1)[0] in FLAG_VALUES:  # --config-dir=DIR
            flags.extend(arg.split("=", 1))
        else:
            flags.append(arg)
            choices = FLAG_VALUES.get(arg, ())
            if arg in FLAG_VALUES and index + 1 < len(args) and (choices is None or args[index + 1] in choices):
                index += 1
                flags.append(args[index])
        index += 1
    return flags, overrides


def resume_overrides(overrides: Sequence[str]) -> List[str]:
    """`resume=RUN_DIR` continues that run in its own folder with its own overrides; later
    overrides on the command line (e.g. a larger `epochs`) apply on top."""
    resume = [o for o in overrides if o.startswith("resume=")]
    if not resume:
        return list(overrides)
    run_dir = os.path.abspath(resume[-1].split("=", 1)[1])
    load_run_config(run_dir)
    saved = load_run_overrides(run_dir)
    rest = [o for o in overrides if not o.startswith("resume=")]
    merged = {}
    for override in [o for o in saved if not o.startswith(("resume=", "hydra."))] + rest:
        merged[override.split("=", 1)[0]] = override
    keep_dir = any(o.startswith("hydra.run.dir=") for o in rest)
    return list(merged.values()) + [f"resume={run_dir}"] + ([] if keep_dir else [f"hydra.run.dir={run_dir}"])


def check_output_location(overrides: Sequence[str]) -> None:
    """The run folder (hydra.run.dir, or outputs/ under the working directory) must be creatable:
    its nearest existing ancestor has to be a writable folder."""
    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for run_dir in run_dirs or ["outputs"]:
        path = os.path.abspath(run_dir)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if not os.path.isdir(path) or not os.access(path, os.W_OK):
            raise CapsrunError(f"cannot create run folder {run_dir}: {path} is not a writable folder; "
                               "set hydra.run.dir to a writable location")


def check_resumable(cfg: DictConfig) -> None:
    """A resumed run must keep the model and data it was trained with (its checkpoints would not
    fit). The saved config is read on the schema, so that keys added since (with their defaults)
    compare equal."""
    saved = OmegaConf.merge(OmegaConf.structured(Config), load_run_config(cfg.resume))
    for section in ("model", "data"):
        keys = ("name", "path") if section == "data" else OmegaConf.to_container(saved.model).keys()
        for key in keys:
            before, after = OmegaConf.select(saved, f"{section}.{key}"), OmegaConf.select(cfg, f"{section}.{key}")
            if before != after:
                raise CapsrunError(f"cannot resume {cfg.resume} with a different {section}.{key} "
                                   f"({before} -> {after}); start a new run instead")
    check_run_files(cfg.resume)


def check_run_files(run_dir: str) -> None:
    """The files a resumed run reads (metrics.json, the checkpoint state files and the newest
    checkpoints) are readable: a damaged one is a CapsrunError before Hydra starts the job, which
    would rewrite the run's .hydra/ files and append to its train.log."""
    from capsrun.training.checkpoints import latest_checkpoint, saved_variable_count  # loads TensorFlow

    read_metrics(Path(run_dir) / METRICS)
    for kind in CHECKPOINT_KINDS:
        path = latest_checkpoint(run_dir, kind)
        if path is not None:
            saved_variable_count(path)


def train_job(cfg: DictConfig) -> float:
    """One Hydra job: trains in the job's output folder; returns the best validation accuracy
    (the value Hydra sweepers such as Optuna maximise). Failures end the process with their exit
    code; the jobs of a sweep run one after another in this process, so each starts clean."""
    from capsrun.training.trainer import train  # loads TensorFlow: only once the configs are checked

    start_job()
    try:
        swept, choices = job_hparams(HydraConfig.get())
        metrics = train(cfg, HydraConfig.get().runtime.output_dir, {"swept": swept, "choices": choices})
    except (CapsrunError, TrainingInterrupted, TrainingDiverged) as error:
        raise SystemExit(exit_code("train", error)) from None
    finally:
        end_job()
    return metrics.get("best_val_accuracy")


def config_sources(flags: Sequence[str]) -> Tuple[Optional[str], str, List[str]]:
    """(the user's config folder of `-cd DIR` / `--config-dir DIR` or None, the primary config's
    name of `-cn NAME` / `--config-name NAME` (default `config`), the other flags)."""
    user_dir, name, rest, index = None, "config", [], 0
    while index < len(flags):
        flag = flags[index]
        if flag in ("-cp", "--config-path"):
            raise CapsrunError(f"{flag} would replace capsrun's own configs; use -cd DIR: DIR's files (config.yaml, "
                               "experiment/NAME.yaml, ...) take priority, capsrun's fill in the rest")
        if flag in ("-cd", "--config-dir", "-cn", "--config-name"):
            if index + 1 >= len(flags) or flags[index + 1].startswith("-"):
                raise CapsrunError(f"{flag} needs a value, e.g. {flag} {'MYCONF' if 'd' in flag else 'NAME'}")
            value = flags[index + 1]
            if flag in ("-cd", "--config-dir"):
                user_dir = user_config_dir(value)
            else:
                name = value
            index += 2
            continue
        rest.append(flag)
        index += 1
    return user_dir, name, rest


def hydra_flags(user_dir: Optional[str], name: str, flags: Sequence[str]) -> List[str]:
    """The flags Hydra gets: a user folder becomes the primary config folder (`--config-path`),
    capsrun's conf/ the folder after it (`--config-dir`); the same order `compose` uses."""
    sources = ["--config-path", user_dir, "--config-dir", config_dir()] if user_dir else []
    return [*sources, "--config-name", name, *flags]


def run_hydra(argv: Sequence[str]) -> int:
    """Runs the Hydra app of `capsrun train` with `argv` as its command line."""
    register_configs()
    app = hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")(train_job)
    saved_argv = sys.argv
    sys.argv = ["capsrun train", *argv]
    try:
        app()
    finally:
        sys.argv = saved_argv
    return 0


def check_train_args(args: Sequence[str]) -> List[DictConfig]:
    """The composed, validated config of every job of `capsrun train ARGS` (flags and overrides;
    used by `capsrun launch` too)."""
    flags, overrides = split_args(args)
    check_flags(flags)
    user_dir, name, _ = config_sources(flags)
    return check_train_overrides(overrides, user_dir, name)


def check_flags(flags: Sequence[str]) -> None:
    """`--epochs 3` is not a Hydra flag: capsrun takes `key=value` overrides."""
    for flag in flags:
        if flag.startswith("-") and flag not in HYDRA_FLAGS:
            key = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
            raise CapsrunError(f"unknown option {flag}; capsrun train takes key=value overrides (e.g. {key}=...); "
                               "capsrun train --help lists them")


def resume_sources(overrides: Sequence[str], user_dir: Optional[str]) -> Tuple[List[str], Optional[str]]:
    """A resumed run reads its configs from where it was trained: its own -cd folder and
    hydra.searchpath, unless the command line gives them again."""
    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if not resume:
        return list(overrides), user_dir
    main, searchpath = load_run_config_sources(resume[-1])
    if user_dir is None and main is not None and os.path.abspath(main) != os.path.abspath(config_dir()):
        if not os.path.isdir(main):
            raise CapsrunError(f"{resume[-1]} was trained with the configs of {main}, which no longer exists; "
                               "pass that config folder again with -cd DIR")
        user_dir = main
    if not any(o.startswith("hydra.searchpath=") for o in overrides):
        overrides = [*searchpath, *overrides]
    return list(overrides), user_dir


REWRITTEN_BY_HYDRA = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log")
"""The files of a run folder that Hydra rewrites (or appends to) when a resumed job starts."""


@contextmanager
def unchanged_on_bad_input(run_dir: str) -> Iterator[None]:
    """Leaves the run folder as it was when the resumed job ends with exit code 2 (bad input):
    Hydra rewrites .hydra/ and appends to train.log before the job can find, e.g., that the
    checkpoint belongs to another model, and the job has by then opened new TensorBoard event
    files. Those files get their bytes and modification times back, files that did not exist are
    removed, and folders the job created (now empty) too."""
    folder = Path(run_dir)
    files = {path for path in folder.rglob("*") if path.is_file()}
    folders = {path for path in folder.rglob("*") if path.is_dir()}
    saved = {}
    for name in REWRITTEN_BY_HYDRA:
        path = folder / name
        if path.is_file():
            saved[path] = (path.read_bytes(), path.stat().st_atime_ns, path.stat().st_mtime_ns)
    try:
        yield
    except SystemExit as stop:
        if stop.code == EXIT_USAGE:
            for path in sorted({path for path in folder.rglob("*") if path.is_file()} - files):
                path.unlink()
            for path in sorted({path for path in folder.rglob("*") if path.is_dir()} - folders, reverse=True):
                if not any(path.iterdir()):
                    path.rmdir()
            for path, (data, atime, mtime) in saved.items():
                write_bytes_atomic(path, data)
                os.utime(path, ns=(atime, mtime))
        raise


def train_command(args: List[str]) -> int:
    flags, overrides = split_args(args)
    check_flags(flags)
    user_dir, name, rest = config_sources(flags)
    if "-h" in rest or "--help" in rest:
        print(train_help(user_dir))
        return 0
    if {"-m", "--multirun"} & set(rest) and INFORMATIONAL & set(rest):
        raise CapsrunError("--cfg and --info show one job; drop -m (e.g. capsrun train KEY=VALUE --cfg job)")
    overrides, user_dir = resume_sources(resume_overrides(overrides), user_dir)
    if not INFORMATIONAL.intersection(rest):
        check_output_location(overrides)
        configs = check_train_overrides(overrides, user_dir, name)
        if any(o.startswith("resume=") for o in overrides):
            check_resumable(configs[0])
        if {"-m", "--multirun"} & set(rest):
            overrides = overrides + job_folder_overrides(overrides)
    resumed = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if resumed and not INFORMATIONAL.intersection(rest):
        with unchanged_on_bad_input(resumed[0]):
            return run_hydra(hydra_flags(user_dir, name, rest) + overrides)
    return run_hydra(hydra_flags(user_dir, name, rest) + overrides)
