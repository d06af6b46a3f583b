"""`capsrun report sweep_dir=PATH`: one table for a whole sweep (e.g. the paper's Table 1).

Reads every job folder of a multirun (its `.hydra/config.yaml`, `metrics.json` and `eval.json`;
`capsrun eval` runs first where `eval.json` is missing, unless `evaluate=false`), groups the
jobs by the keys the sweep varied other than the seed, and writes into the sweep folder:
  report.md   a Markdown table per setting: n runs, mean ± std test error %, best validation
              accuracy, training images/s; then one line per job
  report.csv  the same per setting, full precision
  report.png  test error by routing iterations, error bars over seeds, one series per value of
              the other swept keys (reconstruction off / on for Table 1); for a sweep over models
              and routings (experiment=routing_comparison) one row per model and routing with
              parameters, MACs per image, images/s, test and affine accuracy, and the figure of
              test error against images/s
For a sweep the paper reports on (Table 1 on MNIST or MultiMNIST with the CapsNet and the baseline
CNN, or the affine test set of section 5.2), the paper's figure and the gap to it go beside the
measured ones (capsrun.analysis.paper). Prints the table.
"""
import contextlib
import io
from pathlib import Path
from typing import List, Sequence

from capsrun.analysis.paper import paper_note
from capsrun.analysis.report import (
    Job,
    csv_report,
    load_job,
    markdown_report,
    read_json,
    report_png,
    results_table,
    setting_keys,
    summarise,
    time_table,
    time_targets,
)
from capsrun.atomic import unwritable_reason, write_bytes_atomic
from capsrun.commands import eval as eval_cmd
from capsrun.commands.frontend import CommandSpec, check_dpi, command_config, say
from capsrun.errors import CapsrunError
from capsrun.training.run_folder import EVAL, find_jobs
from capsrun.training.sweeps import end_job, start_job

SPEC = CommandSpec("report", "sweep_dir=PATH [key=value ...]", path_keys=frozenset({"sweep_dir", "output_dir"}),
                   required=(("sweep_dir", "sweep_dir=PATH (the folder of a capsrun train -m sweep)"),))


def evaluate_missing(jobs: Sequence[Job], checkpoint: str) -> None:
    """Runs `capsrun eval` (its Python function, in this process) on the jobs without eval.json
    and reads the eval.json it writes."""
    missing = [job for job in jobs if job.evaluation is None]
    for number, job in enumerate(missing, 1):
        say(f"capsrun report: evaluating {job.name} ({number}/{len(missing)}) on its test set")
        start_job()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # eval's per-run report; the table comes below
                eval_cmd.eval_command([f"run_dir={job.folder}", f"checkpoint={checkpoint}"])
        except CapsrunError as error:
            raise CapsrunError(f"evaluating {job.folder}: {error} (or report without it: evaluate=false)") from None
        finally:
            end_job()
        job.evaluation = read_json(job.folder / EVAL)


def report_command(args: List[str]) -> int:
    cfg = command_config(SPEC, args)
    if cfg is None:
        return 0
    check_dpi(cfg.dpi)
    if cfg.time_targets and not all(0 < target <= 1 for target in cfg.time_targets):
        raise CapsrunError(f"time_targets must be validation accuracies as fractions in (0, 1], e.g. "
                           f"[0.985,0.99]; got {list(cfg.time_targets)}")
    sweep, folders = find_jobs(cfg.sweep_dir)
    output = Path(cfg.output_dir).expanduser().absolute() if cfg.output_dir else sweep
    if not output.is_dir() or unwritable_reason(output):
        raise CapsrunError(f"output_dir {output} is not a writable folder; create it or choose another")
    loaded = [load_job(folder) for folder in folders]
    jobs = [job for job in loaded if job is not None]
    if not jobs:
        raise CapsrunError(f"no job in {sweep} has finished training (no metrics.json with status completed); "
                           "wait for the sweep, or resume its jobs with capsrun train resume=JOB_DIR")
    if cfg.evaluate:
        evaluate_missing(jobs, cfg.checkpoint)
    keys = setting_keys(jobs, list(cfg.group_by) if cfg.group_by else None)
    rows = summarise(jobs, keys, time_targets(jobs, cfg.time_targets))
    files = {"report.md": markdown_report(sweep, jobs, keys, rows, len(loaded) - len(jobs)),
             "report.csv": csv_report(rows, keys),
             "report.png": report_png(rows, keys, f"{sweep.parent.name}/{sweep.name}", cfg.dpi)}
    for name, data in files.items():
        write_bytes_atomic(output / name, data.encode() if isinstance(data, str) else data)
    print(results_table(rows, keys))
    if paper_note(rows):
        print(paper_note(rows))
    if time_table(rows):
        print(f"\nTime to accuracy (s of training, tracing excluded):\n{time_table(rows)}")
    print(f"wrote {', '.join(str(output / name) for name in files)}")
    return 0
