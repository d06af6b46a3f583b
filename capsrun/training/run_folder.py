"""The layout of a run folder, owned here and nowhere else, and finding runs on disk.

A run folder (a Hydra output folder):
  .hydra/            config.yaml (resolved run config), overrides.yaml, hydra.yaml
  checkpoints/last/  model + optimizer + progress, every epoch (and every N steps if asked)
  checkpoints/best/  the checkpoint with the best validation accuracy so far
  events.out.tfevents.*  TensorBoard run `<run>`: HParams, config text, learning rate, images/s,
                     results at the end (result/*), and what eval and visualize add (test/*, visualize/*)
  train/, val/       TensorBoard runs `<run>/train` and `<run>/val`: the same tags (loss, accuracy, ...)
                     per phase, so that one chart overlays training and validation
  tensorboard/       (runs trained before the per-phase layout) all event files in one folder
  train.log          the log
  metrics.json       summary, rewritten atomically after every epoch
  eval.json ...      written by `capsrun eval` (and the figures of eval and visualize)

This module imports no TensorFlow (`capsrun report` and config checks use it).
"""
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsrun.atomic import PathLike, unwritable_reason
from capsrun.errors import CapsrunError

RUN_CONFIG = Path(".hydra") / "config.yaml"
RUN_OVERRIDES = Path(".hydra") / "overrides.yaml"
RUN_HYDRA = Path(".hydra") / "hydra.yaml"
CHECKPOINTS = "checkpoints"
CHECKPOINT_KINDS = ("last", "best")
TENSORBOARD = "tensorboard"
"""The one event folder of runs trained before the per-phase layout (still read and resumed)."""
PHASES = ("train", "val")  # each phase writer's folder is named after the phase
"""Per-phase event folders (TensorBoard runs `<run>/train`, `<run>/val`), beside the run's own
event files in the run folder itself (TensorBoard run `<run>`)."""
METRICS = "metrics.json"
SWEPT_KEYS = "swept_keys.yaml"
"""In a sweep folder: the keys the sweep varies (the first columns of TensorBoard's HParams table)."""
EVAL = "eval.json"

def session_folder(run_dir: PathLike) -> Path:
    """Where a run's own TensorBoard events go (HParams, run-level curves, results, test/*,
    visualize/*): the run folder itself, or `tensorboard/` for a run trained before the
    per-phase layout, so that what eval and visualize add stays beside that run's curves."""
    legacy = Path(run_dir) / TENSORBOARD
    return legacy if legacy.is_dir() else Path(run_dir)


def event_folders(run_dir: PathLike) -> List[Path]:
    """Every folder of a run that may hold TensorBoard event files (new layout and old)."""
    run_dir = Path(run_dir)
    return [run_dir, *(run_dir / phase for phase in PHASES), run_dir / TENSORBOARD]


def is_run(folder: PathLike) -> bool:
    """True when `folder` is a run folder (it holds the run's resolved config)."""
    return (Path(folder) / RUN_CONFIG).is_file()


def _load_yaml(path: Path) -> Any:
    """A YAML file of a run folder; a damaged one is a CapsrunError naming it."""
    try:
        return OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CapsrunError(f"{path} is damaged ({detail}); restore it from a copy, or move the run "
                           "folder aside and retrain") from None


def load_run_config(run_dir: PathLike) -> DictConfig:
    """The resolved config a run was trained with (its `.hydra/config.yaml`)."""
    if not Path(run_dir).is_dir():
        raise CapsrunError(f"run folder {run_dir} does not exist")
    if not is_run(run_dir):
        raise CapsrunError(f"{run_dir} is not a capsrun run folder (no {RUN_CONFIG})")
    config = _load_yaml(Path(run_dir) / RUN_CONFIG)
    if not OmegaConf.is_dict(config):
        raise CapsrunError(f"{Path(run_dir) / RUN_CONFIG} is damaged (not a mapping of config keys); restore it "
                           "from a copy, or move the run folder aside and retrain")
    return config


def load_run_overrides(run_dir: PathLike) -> List[str]:
    """The command-line overrides the run was started with (its `.hydra/overrides.yaml`)."""
    path = Path(run_dir) / RUN_OVERRIDES
    overrides = _load_yaml(path) if path.is_file() else []
    if not OmegaConf.is_list(overrides) and not isinstance(overrides, list):
        raise CapsrunError(f"{path} is damaged (not a list of overrides); restore it from a copy")
    return [str(override) for override in overrides]


def load_run_config_sources(run_dir: PathLike) -> Tuple[Optional[str], List[str]]:
    """(the primary config folder the run was composed from, its hydra.searchpath overrides), from
    its `.hydra/hydra.yaml`; (None, []) when that file is missing or unreadable."""
    try:
        hydra_cfg = OmegaConf.load(Path(run_dir) / RUN_HYDRA).hydra
        main = [str(source.path) for source in hydra_cfg.runtime.config_sources
                if source.provider == "main" and source.schema == "file"]
        searchpath = [str(o) for o in hydra_cfg.overrides.hydra if str(o).startswith("hydra.searchpath=")]
    except (OSError, OmegaConfBaseException, yaml.YAMLError, AttributeError, KeyError, TypeError):
        # an old or damaged hydra.yaml: the run's own overrides still resume it
        return None, []
    return (main[0] if main else None), searchpath


def check_writable(folder: PathLike) -> None:
    """Fails early, before any training, when the run folder cannot be written."""
    reason = unwritable_reason(folder)
    if reason:
        raise CapsrunError(f"run folder {folder} is not writable ({reason}); choose another hydra.run.dir")


def natural_key(text: Any) -> list:
    """Sort key that puts `seed=2` before `seed=10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def checkpoint_step(path: PathLike) -> int:
    """The global step in a checkpoint prefix such as `.../ckpt-1875` (0 if it has none)."""
    suffix = str(path).rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def expand_run_dirs(spec: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """A run folder, a list of them, or a multirun folder (whose job folders are runs) -> the
    list of run folders (absolute Paths, no duplicates, multirun jobs in name order)."""
    items = list(spec) if OmegaConf.is_list(spec) or isinstance(spec, (list, tuple)) else [spec]
    runs: List[Path] = []
    for item in items:
        folder = Path(os.path.expanduser(str(item))).absolute()
        if not folder.is_dir():
            raise CapsrunError(f"run folder {folder} does not exist")
        if is_run(folder):
            found = [folder]
        else:
            runs_inside = (child for child in folder.iterdir() if child.is_dir() and is_run(child))
            found = sorted(runs_inside, key=lambda path: natural_key(path.name))
            if not found:
                raise CapsrunError(f"{folder} is not a capsrun run folder (no {RUN_CONFIG}) nor a multirun "
                                   "folder of runs; pass the folder that capsrun train wrote")
        runs.extend(run for run in found if run not in runs)
    return runs


def single_run(spec: Union[PathLike, Sequence[PathLike]], command: str) -> Path:
    """The one run folder of `run_dir=` for commands that take exactly one run."""
    runs = expand_run_dirs(spec)
    if len(runs) != 1:
        raise CapsrunError(f"capsrun {command} takes one run, got {len(runs)}; pass run_dir=ONE_RUN_FOLDER")
    return runs[0]


def find_jobs(sweep_dir: PathLike) -> tuple:
    """(the sweep folder, its job folders): every run folder anywhere below `sweep_dir` (Hydra's
    launchers may nest them), in natural order, without submitit's own folders."""
    sweep = Path(sweep_dir).expanduser().absolute()
    fix = "pass the folder that `capsrun train -m` wrote (outputs/multirun/DATE/TIME)"
    if not sweep.is_dir():
        raise CapsrunError(f"sweep_dir {sweep} is not a folder; {fix}")
    if is_run(sweep):
        raise CapsrunError(f"{sweep} is a single run, not a sweep; {fix}")
    jobs = sorted({path.parent.parent for path in sweep.rglob(RUN_CONFIG.as_posix())
                   if ".submitit" not in path.relative_to(sweep).parts},
                  key=lambda folder: natural_key(folder.relative_to(sweep)))
    if not jobs:
        raise CapsrunError(f"{sweep} holds no job folders (none with {RUN_CONFIG}); {fix}")
    return sweep, jobs
