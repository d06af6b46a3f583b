"""`capsrun <command> [overrides]`: dispatches on the first argument, hands the rest to Hydra.

Every command checks its config before anything is written; bad input ends with one line on
stderr and exit code 2, never a traceback.
"""
import itertools
import os
import sys

from capsrun.errors import EXIT_USAGE, CapsrunError

USAGE = """usage: capsrun <command> [key=value ...]

commands:
  train   train a CapsNet (Hydra overrides, -m for sweeps, resume=RUN_DIR to continue a run)
  launch  run `train` as N local workers of a multi-worker cluster (workers=N -- train ...)
  eval    test accuracy, confusion matrix and misclassified digits of runs (run_dir=PATH, several = ensemble)
  visualize  reconstructions, capsule-dimension perturbations (Figure 4) and capsule lengths (run_dir=PATH)
  predict classify PNG/JPEG/.npy digits with a trained run (run_dir=PATH images=[a.png,b.png])
  export  write a run's model as a TensorFlow SavedModel (run_dir=PATH)
  bench   train/eval speed on this machine vs a plain reference CapsNet and the conv-only bound
  report  table, CSV and plot of a sweep: mean +- std test error per setting over seeds (sweep_dir=PATH)

examples:
  capsrun train epochs=50
  capsrun train -m model.routing_iterations=1,2,3
  capsrun train -m experiment=table1 && capsrun report sweep_dir=outputs/multirun/table1/DATE/TIME
  capsrun train resume=outputs/2026-11-28/10-00-00
"""
CONFIG_GROUPS = ("data", "model", "loss", "optimizer", "trainer", "experiment", "hparams_search")
MAX_CHECKED_SWEEP_JOBS = 64


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
FLAG_VALUES = {flag: None for flag in ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                                       "-cn", "--config-dir", "-cd", "--experimental-rerun")}
FLAG_VALUES.update({"--info": INFO_CHOICES, "-i": INFO_CHOICES})
"""Hydra flags that take a value (None: any value; else the value is optional, one of these)."""


def _split_args(args):
    """(Hydra flags such as -m/--cfg with their values, config overrides), in any order:
    `capsrun train epochs=5 --cfg job` keeps `--cfg job` together."""
    flags, overrides, index = [], [], 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("-"):
            overrides.append(arg)
        else:
            flags.append(arg)
            choices = FLAG_VALUES.get(arg, ())
            if arg in FLAG_VALUES and index + 1 < len(args) and (choices is None or args[index + 1] in choices):
                index += 1
                flags.append(args[index])
        index += 1
    return flags, overrides


def _parse_overrides(overrides):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise CapsrunError(f"cannot parse overrides: {str(error).strip().splitlines()[0]}") from None


def _check_keys(parsed):
    """Unknown keys are rejected with the closest valid key."""
    from omegaconf import OmegaConf

    from capsrun.config import Config, flat_keys, suggest_key

    known = flat_keys(OmegaConf.structured(Config))
    for override in parsed:
        key = override.key_or_group
        if override.is_add() or override.is_delete() or key.startswith("hydra") or key in CONFIG_GROUPS:
            continue
        if key not in known:
            raise CapsrunError(suggest_key(key, known))


def _one_line(error):
    """The useful lines of a Hydra/OmegaConf error (and of its cause) joined into one line."""
    if error.__cause__ is not None:
        return f"{_one_line_of(error)}: {_one_line_of(error.__cause__)}"
    return _one_line_of(error)


def _one_line_of(error):
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    noise = ("full_key", "object_type", "reference_type", "Set the env")
    useful = [line for line in lines if not line.startswith(noise)]
    return ": ".join(useful[:2]).replace("\n", " ") if useful else type(error).__name__


def compose(config_name, overrides):
    """Composes `conf/<config_name>.yaml` with overrides through Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from capsrun.config import config_dir, register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="capsrun"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise CapsrunError(f"invalid config: {_one_line(error)}") from None


def check_train_overrides(overrides):
    """Composes and validates the config of every job a command line would run (sweeps included);
    returns the composed configs."""
    from capsrun.config import validate

    parsed = _parse_overrides(overrides)
    _check_keys(parsed)
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
        try:
            configs.append(compose("config", combination))
        except CapsrunError as error:
            from capsrun.sweeps import plugin_hint

            raise CapsrunError(plugin_hint(str(error))) from None
        validate(configs[-1])
    return configs


def _resume_overrides(overrides):
    """`resume=RUN_DIR` continues that run in its own folder with its own overrides; later
    overrides on the command line (e.g. a larger `epochs`) apply on top."""
    resume = [o for o in overrides if o.startswith("resume=")]
    if not resume:
        return overrides
    from omegaconf import OmegaConf

    from capsrun.runfiles import load_run_config

    run_dir = os.path.abspath(resume[-1].split("=", 1)[1])
    load_run_config(run_dir)
    saved = OmegaConf.load(os.path.join(run_dir, ".hydra", "overrides.yaml"))
    rest = [o for o in overrides if not o.startswith("resume=")]
    merged = {}
    for override in [o for o in saved if not o.startswith(("resume=", "hydra."))] + rest:
        merged[override.split("=", 1)[0]] = override
    keep_dir = any(o.startswith("hydra.run.dir=") for o in rest)
    return list(merged.values()) + [f"resume={run_dir}"] + ([] if keep_dir else [f"hydra.run.dir={run_dir}"])


def train_command(args):
    flags, overrides = _split_args(args)
    overrides = _resume_overrides(overrides)
    informational = {"--help", "-h", "--cfg", "-c", "--info", "--hydra-help", "--shell-completion", "-sc"}
    if not informational.intersection(flags):
        _check_output_location(overrides)
        configs = check_train_overrides(overrides)
        if any(o.startswith("resume=") for o in overrides):
            _check_resumable(configs[0])
    return _run_hydra(flags + overrides)


def _check_output_location(overrides):
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


def _check_resumable(cfg):
    """A resumed run must keep the model it was trained with (its checkpoints would not fit)."""
    from omegaconf import OmegaConf

    from capsrun.runfiles import load_run_config

    saved = load_run_config(cfg.resume)
    for section in ("model", "data"):
        keys = ("name", "path") if section == "data" else OmegaConf.to_container(saved.model).keys()
        for key in keys:
            if OmegaConf.select(saved, f"{section}.{key}") != OmegaConf.select(cfg, f"{section}.{key}"):
                raise CapsrunError(
                    f"cannot resume {cfg.resume} with a different {section}.{key} "
                    f"({OmegaConf.select(saved, f'{section}.{key}')} -> {OmegaConf.select(cfg, f'{section}.{key}')}); "
                    "start a new run instead"
                )


def _run_hydra(argv):
    """Runs the Hydra app for `capsrun train` with `argv` as its command line."""
    import hydra

    from capsrun.config import config_dir, register_configs

    register_configs()

    @hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
    def train_app(cfg):
        from hydra.core.hydra_config import HydraConfig

        from capsrun.sweeps import end_job, start_job
        from capsrun.training import train

        start_job()  # the jobs of a sweep run one after another in this process: each starts clean
        try:
            metrics = train(cfg, HydraConfig.get().runtime.output_dir)
        except CapsrunError as error:
            print(f"capsrun train: error: {error}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        finally:
            end_job()
        return metrics.get("best_val_accuracy")  # the value Hydra sweepers (Optuna) maximise

    saved_argv = sys.argv
    sys.argv = ["capsrun train", *argv]
    try:
        train_app()
    finally:
        sys.argv = saved_argv
    return 0


COMMANDS = {
    "train": ("capsrun.cli", "train_command"),
    "launch": ("capsrun.launcher", "launch_command"),
    "eval": ("capsrun.eval_run", "eval_command"),
    "visualize": ("capsrun.visualize", "visualize_command"),
    "predict": ("capsrun.predict", "predict_command"),
    "export": ("capsrun.export", "export_command"),
    "bench": ("capsrun.bench", "bench_command"),
    "report": ("capsrun.report", "report_command"),
}
"""Subcommand -> (module, function taking the remaining arguments and returning an exit code).
Modules are imported only when their command runs, so that `capsrun --help` stays instant."""


def _command(name):
    import importlib

    module, function = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def main(argv=None):
    """Entry point of the `capsrun` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"capsrun: error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)} "
              "(see capsrun --help)", file=sys.stderr)
        return EXIT_USAGE
    _quiet_tensorflow()
    try:
        return _command(command)(rest)
    except CapsrunError as error:
        print(f"capsrun {command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"capsrun {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
