"""`capsrun bench` (`make bench`): how fast capsrun trains and evaluates on this machine.

conf/bench.yaml configures it; capsrun.analysis.bench measures; docs/performance.md explains the
rows and the results on the development machine.
"""
import difflib
from pathlib import Path
from typing import List

from omegaconf import DictConfig, OmegaConf

from capsrun.atomic import unwritable_reason, write_json_atomic
from capsrun.commands.frontend import CommandSpec, command_config
from capsrun.config.schema import Config
from capsrun.config.validation import validate
from capsrun.errors import CapsrunError
from capsrun.models.routing import ROUTINGS

CAPSULE_MODELS = ("capsnet", "efficient_capsnet", "em_capsnet")
"""`model.name`s bench measures: networks with `primary_capsules` and class capsules `digit_caps`
(capsrun.models.capsnet.CapsuleNetwork); the reference and conv-only rows are the CapsNet's."""

SPEC = CommandSpec("bench", "[key=value ...]", path_keys=frozenset({"output"}),
                   groups=frozenset({"data", "model", "loss", "optimizer", "trainer"}))


def bench_command(args: List[str]) -> int:
    """`capsrun bench [key=value ...]`: measures, prints the table, writes the JSON; returns 0."""
    cfg = command_config(SPEC, args)
    if cfg is None:
        return 0
    check_bench_config(cfg)
    output = Path(cfg.output).expanduser()
    reason = unwritable_reason(output.parent)
    if reason:
        raise CapsrunError(f"cannot write {output} ({reason}); set output=PATH")
    from capsrun.analysis import bench  # loads TensorFlow: after the checks, so that they stay fast

    report = bench.run_bench(cfg)
    report["command"] = " ".join(["capsrun bench", *args])
    print(bench.format_table(report))
    write_json_atomic(output, report)
    print(f"\nwritten: {output}")
    return 0


def check_bench_config(cfg: DictConfig) -> None:
    """The bench settings, and the train settings they imply, checked."""
    for key in ("warmup_steps", "timed_steps", "pipeline_batches"):
        if cfg[key] < 1:
            raise CapsrunError(f"{key} must be >= 1, got {cfg[key]}")
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise CapsrunError(f"batch_sizes must be a non-empty list of sizes >= 1, got {list(cfg.batch_sizes)}")
    if cfg.reference_max_batch_size is not None and cfg.reference_max_batch_size < 1:
        raise CapsrunError(f"reference_max_batch_size must be null or >= 1, got {cfg.reference_max_batch_size}")
    if cfg.routing_batch_size < 1:
        raise CapsrunError(f"routing_batch_size must be >= 1, got {cfg.routing_batch_size}")
    for name in cfg.routings or []:
        if name not in ROUTINGS:
            close = difflib.get_close_matches(name, list(ROUTINGS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise CapsrunError(f"routings: unknown routing '{name}'{hint} (choose from {', '.join(ROUTINGS)})")
    if cfg.model.name not in CAPSULE_MODELS:
        raise CapsrunError(f"capsrun bench measures capsule networks; model.name must be one of "
                           f"{', '.join(CAPSULE_MODELS)}, got '{cfg.model.name}'")
    train_view = OmegaConf.merge(OmegaConf.structured(Config), {
        "seed": cfg.seed, "batch_size": max(cfg.batch_sizes),
        **{group: cfg[group] for group in ("data", "model", "loss", "optimizer", "trainer")},
    })
    validate(train_view)
