"""Sweep tables (the engine of `capsrun report`): the jobs of a multirun folder, grouped by the
keys the sweep varied other than the seed, as Markdown, CSV and a figure.

Reads each job's `.hydra/config.yaml`, `metrics.json` and `eval.json` (layout in
capsrun.training.run_folder). A job is a finished training run; its test numbers come from
`capsrun eval`. A sweep over models and routings (`is_comparison`) gets one row per model and
routing with its parameters, MACs per image and speed, and an error / speed trade-off figure.
A sweep the paper reports on (Table 1, section 5.2) gets the paper's figure and the gap to it
beside the measured columns: capsrun.analysis.paper, hooked in by `add_paper_columns`.
"""
import csv
import difflib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from capsrun.analysis.paper import (
    TEST_ERROR,
    paper_cells,
    paper_csv_cells,
    paper_csv_header,
    paper_figures,
    paper_headers,
    paper_note,
)
from capsrun.config.keys import flatten_dict
from capsrun.errors import CapsrunError
from capsrun.numbers import PERCENT_DECIMALS, percent, percent_points
from capsrun.training.history import first_reaching
from capsrun.training.run_folder import EVAL, METRICS, RUN_CONFIG

log = logging.getLogger(__name__)


NOT_SETTINGS = ("seed", "resume")


X_KEY = "model.routing_iterations"


MD_COLUMNS = ("setting", "n runs", "test error % (mean ± std)", "best val. accuracy % (mean ± std)", "images/s")


@dataclass
class Job:
    """One job of the sweep: its folder, flat config {dotted key: value}, metrics.json and
    eval.json (None where there is none)."""

    folder: Path
    config: dict
    metrics: dict
    evaluation: Optional[dict]

    @property
    def name(self) -> str:
        return self.folder.name


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CapsrunError(f"cannot read {path} ({error}); delete it, or rerun what writes it") from None


def load_job(folder: Path) -> Optional[Job]:
    """A Job, or None (with a note on stderr) when the job has not finished training."""
    metrics_file = folder / METRICS
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    if metrics.get("status") != "completed":
        log.info(f"capsrun report: skipping {folder.name}: training {metrics.get('status', 'not started')}")
        return None
    try:
        config = flatten_dict(OmegaConf.to_container(OmegaConf.load(folder / RUN_CONFIG), resolve=True))
    except Exception as error:  # YAML or interpolation errors of a damaged file
        raise CapsrunError(f"cannot read {folder / RUN_CONFIG} ({type(error).__name__}); "
                           "restore it or move the job folder out of the sweep") from None
    eval_file = folder / EVAL
    return Job(folder, config, metrics, read_json(eval_file) if eval_file.is_file() else None)


def _differs(jobs: Sequence[Job], key: str) -> bool:
    return len({json.dumps(job.config.get(key), sort_keys=True) for job in jobs}) > 1


def setting_keys(jobs: Sequence[Job], group_by: Optional[Sequence[str]] = None) -> List[str]:
    """The keys to group by: `group_by`, else every config key whose value differs between the
    jobs, other than the seed (routing iterations first)."""
    if group_by:
        known = set().union(*(job.config for job in jobs))
        for key in group_by:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                raise CapsrunError(f"group_by: no config key '{key}' in the jobs"
                                   + (f"; did you mean '{close[0]}'?" if close else ""))
        return list(group_by)
    keys = sorted(key for key in set().union(*(job.config for job in jobs))
                  if key not in NOT_SETTINGS and _differs(jobs, key))
    return sorted(keys, key=lambda key: key != X_KEY)


def _sort_value(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def _short_names(keys: Sequence[str]) -> Dict[str, str]:
    """Dotted keys shortened to their last part where that stays unambiguous."""
    leaves = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves, strict=True)}


def _stats(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    values = [value for value in values if value is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def _first(values) -> Any:
    return next((value for value in values if value is not None), None)


def _accuracy(error_stats: tuple) -> tuple:
    """(mean, std) of accuracy % from (mean, std) of error %: 100 - mean, the same std."""
    mean, std = error_stats
    return (None if mean is None else 100.0 - mean), std


def job_routing(job: Job) -> Optional[str]:
    """The routing the job's model used: metrics.json's `routing` (the routing layer found in the
    built model, None for a model without one, e.g. baseline_cnn); for runs trained before that
    field existed, `model.routing` of a CapsNet, else None."""
    if "routing" in job.metrics:
        return job.metrics["routing"]
    return job.config.get("model.routing") if job.config.get("model.name") == "capsnet" else None


def time_targets(jobs: Sequence[Job], requested: Optional[Sequence[float]] = None) -> List[float]:
    """The validation accuracies (fractions) whose time to accuracy the report shows: `requested`
    (report's time_targets), else every trainer.target_val_accuracy the jobs trained with."""
    if requested:
        return sorted(float(target) for target in requested)
    return sorted({float(job.metrics["target_val_accuracy"]) for job in jobs
                   if job.metrics.get("target_val_accuracy") is not None})


def time_to_accuracy(group: Sequence[Job], target: float) -> dict:
    """Time to validation accuracy `target` over the runs of a setting, read from each run's
    validations (metrics.json): `seconds` and `epochs` (mean, std) over the runs that reached it,
    `reached` (how many did) and `runs` (how many were timed: runs trained before the training
    clock existed have no validations and are left out)."""
    timed = [job.metrics["validations"] for job in group if job.metrics.get("validations")]
    first = [record for record in (first_reaching(validations, target) for validations in timed) if record]
    return {"seconds": _stats([record["seconds"] for record in first]),
            "epochs": _stats([record["epoch"] for record in first]),
            "reached": len(first), "runs": len(timed)}


def summarise(jobs: Sequence[Job], keys: Sequence[str], targets: Sequence[float] = ()) -> List[dict]:
    """One row per setting: the group's values and statistics over its runs (sample std), and
    the time to each validation accuracy of `targets` (`time_to_accuracy`)."""
    groups = {}
    for job in jobs:
        groups.setdefault(tuple(json.dumps(job.config.get(key)) for key in keys), []).append(job)
    names = _short_names(keys)
    figures = paper_figures([[job.config for job in group] for group in groups.values()], setting_keys(jobs))
    rows = []
    for group, figure in zip(groups.values(), figures, strict=True):
        values = {key: group[0].config.get(key) for key in keys}
        errors = [job.evaluation.get("test_error_percent") for job in group if job.evaluation]
        extra = {name: _stats([job.evaluation["extra_tests"][name]["test_error_percent"] for job in group
                               if name in (job.evaluation or {}).get("extra_tests", {})])
                 for name in sorted({n for job in group for n in (job.evaluation or {}).get("extra_tests", {})})}
        val = [100.0 * job.metrics["best_val_accuracy"] for job in group
               if job.metrics.get("best_val_accuracy") is not None]
        rows.append({
            "setting": ", ".join(f"{names[key]}={values[key]}" for key in keys) or "all jobs",
            "values": values,
            "n_runs": len(group),
            "n_evaluated": len(errors),
            "seeds": sorted(job.config.get("seed") for job in group),
            "test_error": _stats(errors),
            "extra_test_errors": extra,
            "best_val_accuracy": _stats(val),
            "best_val_accuracy_max": max(val) if val else None,
            "images_per_second": _stats([job.metrics.get("images_per_second") for job in group])[0],
            "images_per_second_stats": _stats([job.metrics.get("images_per_second") for job in group]),
            "extra_test_accuracies": {name: _accuracy(stats) for name, stats in extra.items()},
            "parameters": _first(job.metrics.get("parameters") for job in group),
            "macs_per_image": _first(job.metrics.get("macs_per_image") for job in group),
            "model": group[0].config.get("model.name"),
            "routing": job_routing(group[0]),
            "jobs": [job.name for job in group],
            "paper": figure,  # the paper's figure for this setting (capsrun.analysis.paper), or None
            "time_to_accuracy": {target: time_to_accuracy(group, target) for target in targets},
        })
    return sorted(rows, key=lambda row: [_sort_value(row["values"][key]) for key in keys])


def _pm(stats: tuple) -> str:
    """A mean ± std of percentages for a column headed %: the mean as everywhere, the std one
    decimal finer (the paper's Table 1: 0.25 ± 0.005)."""
    mean, std = stats
    if mean is None:
        return "n/a"
    return percent_points(mean, sign=False) + ("" if std is None else f" ± {std:.{PERCENT_DECIMALS + 1}f}")


def _speed_pm(stats: tuple) -> str:
    """Images/s as mean ± std: whole numbers, the std one decimal finer (as `_pm`)."""
    mean, std = stats
    if mean is None:
        return "n/a"
    return f"{mean:,.0f}" + ("" if std is None else f" ± {std:,.1f}")


def extra_test_names(rows: Sequence[dict]) -> List[str]:
    """Names of the further test sets (e.g. `affine`) evaluated in any job, sorted."""
    return sorted({name for row in rows for name in row["extra_test_errors"]})


def add_paper_columns(columns: List[str], body: List[List[str]], rows: Sequence[dict], as_error: bool) -> None:
    """Inserts the paper's figure and the gap to it (capsrun.analysis.paper) after the measured
    column they compare with, into the header `columns` and each row's cells of `body`, in place;
    nothing for a sweep without paper figures. `as_error`: the table shows extra test sets as errors."""
    for measure, stem, headers in paper_headers(rows, as_error):
        at = next((i + 1 for i, column in enumerate(columns) if column.startswith(stem)), len(columns))
        columns[at:at] = headers
        for cells, row in zip(body, rows, strict=True):
            cells[at:at] = paper_cells(row, measure, as_error)


def markdown_table(rows: Sequence[dict], paper: bool = True) -> str:
    """One row per setting (Table 1's shape); with the paper's figures beside the measured ones
    where the sweep has them, unless not `paper`."""
    extras = extra_test_names(rows)
    columns = [*MD_COLUMNS[:3], *(f"{name} test error % (mean ± std)" for name in extras), *MD_COLUMNS[3:]]
    body = []
    for row in rows:
        n = f"{row['n_runs']}" + ("" if row["n_evaluated"] == row["n_runs"] else f" ({row['n_evaluated']} evaluated)")
        speed = "n/a" if row["images_per_second"] is None else f"{row['images_per_second']:.0f}"
        body.append([row["setting"], n, _pm(row["test_error"]),
                     *(_pm(row["extra_test_errors"].get(name, (None, None))) for name in extras),
                     _pm(row["best_val_accuracy"]), speed])
    if paper:
        add_paper_columns(columns, body, rows, as_error=True)
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1),
             *("| " + " | ".join(cells) + " |" for cells in body)]
    return "\n".join(lines)


COMPARISON_KEYS = ("model.name", "model.routing")
"""A sweep that varies these (and not the routing iterations) is a comparison of models and
routings: `is_comparison`."""


def is_comparison(keys: Sequence[str]) -> bool:
    """True for a sweep over models and/or routings (experiment=routing_comparison): its table is
    `comparison_table` and its figure the error / speed trade-off (`tradeoff_png`)."""
    return X_KEY not in keys and any(key in keys for key in COMPARISON_KEYS)


def _count(value: Optional[float], millions: bool = False) -> str:
    """A count with thousands separators; in millions (one decimal) from 10M on when `millions`."""
    if value is None:
        return "n/a"
    return f"{value / 1e6:,.1f}M" if millions and value >= 1e7 else f"{int(value):,}"


def comparison_table(rows: Sequence[dict], keys: Sequence[str]) -> str:
    """One row per model and routing (and value of any other swept key): parameters, MACs per
    image, training images/s, test error % and the accuracy % on every extra test set (mean ± std
    over the seeds), and the paper's figures beside them where the sweep has them. A model without
    a routing shows `-` as its routing."""
    extras = extra_test_names(rows)
    others = [key for key in keys if key not in COMPARISON_KEYS]
    names = _short_names(others)
    columns = ["model", "routing", *(["setting"] if others else []), "n runs", "parameters", "MACs / image",
               "train images/s", "test error % (mean ± std)",
               *(f"{name} accuracy % (mean ± std)" for name in extras), "best val. accuracy % (mean ± std)"]
    body = []
    for row in rows:
        n = f"{row['n_runs']}" + ("" if row["n_evaluated"] == row["n_runs"] else f" ({row['n_evaluated']} evaluated)")
        speed = row["images_per_second_stats"]
        cells = [row["model"] or "n/a", row["routing"] or "-",
                 *([", ".join(f"{names[key]}={row['values'][key]}" for key in others)] if others else []), n,
                 _count(row["parameters"]), _count(row["macs_per_image"], millions=True),
                 _speed_pm(speed), _pm(row["test_error"]),
                 *(_pm(row["extra_test_accuracies"].get(name, (None, None))) for name in extras),
                 _pm(row["best_val_accuracy"])]
        body.append(cells)
    add_paper_columns(columns, body, rows, as_error=False)
    lines = ["| " + " | ".join(columns) + " |", "| --- | --- |" + (" --- |" if others else "")
             + " ---: |" * (len(columns) - 2 - bool(others)), *("| " + " | ".join(cells) + " |" for cells in body)]
    return "\n".join(lines)


def _target_name(target: float) -> str:
    """0.985 -> '98.5%'."""
    return f"{100 * target:.10g}%"


def _seconds_pm(stats: tuple) -> str:
    mean, std = stats
    if mean is None:
        return "n/a"
    return f"{mean:,.1f}" + ("" if std is None else f" ± {std:,.1f}")


def time_table(rows: Sequence[dict]) -> str:
    """Time to accuracy, one row per setting: for each target validation accuracy the training
    time (training steps and validation passes, tracing excluded; capsrun.training.clock) and the
    epochs until the first validation that reached it, mean ± std over the runs that did, and how
    many runs reached it. '' when the report has no targets."""
    targets = sorted({target for row in rows for target in row["time_to_accuracy"]})
    if not targets:
        return ""
    columns = ["setting", "n runs"]
    for target in targets:
        name = _target_name(target)
        columns += [f"time to {name} val. (s, mean ± std)", f"epochs to {name}", f"reached {name}"]
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for row in rows:
        cells = [row["setting"], str(row["n_runs"])]
        for target in targets:
            stats = row["time_to_accuracy"][target]
            epochs = stats["epochs"]
            cells += [_seconds_pm(stats["seconds"]),
                      "n/a" if epochs[0] is None else f"{epochs[0]:.2f}" + ("" if epochs[1] is None
                                                                            else f" ± {epochs[1]:.2f}"),
                      f"{stats['reached']}/{stats['runs']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_table(rows: Sequence[dict], keys: Sequence[str]) -> str:
    """The table of the report: `comparison_table` for a model / routing comparison, else
    `markdown_table` (Table 1's shape)."""
    return comparison_table(rows, keys) if is_comparison(keys) else markdown_table(rows)


def markdown_report(sweep: Path, jobs: Sequence[Job], keys: Sequence[str], rows: Sequence[dict], skipped: int) -> str:
    evaluated = sum(job.evaluation is not None for job in jobs)
    seeds = sorted({job.config.get("seed") for job in jobs})
    lines = [
        f"# Sweep report: {sweep}", "",
        f"{len(jobs)} completed jobs ({evaluated} evaluated on the test set"
        + (f"; {skipped} not finished, left out" if skipped else "") + "), "
        f"grouped by {', '.join(keys) or 'nothing (no swept key besides the seed)'}; "
        f"seeds {', '.join(map(str, seeds))}.",
        "Test error: `capsrun eval` (eval.json) of each job; mean ± sample standard deviation over the runs of a "
        "setting. Best validation accuracy: each run's best epoch (metrics.json). images/s: training throughput "
        "of the last epoch, mean over the runs."
        + (" Parameters and MACs per image (multiply-accumulates of one forward pass, from the layer shapes; "
           "capsrun.models.cost): metrics.json; accuracy on the extra test sets = 100 - their error; "
           "routing `-`: the model has none." if is_comparison(keys) else ""), "",
        results_table(rows, keys), "",
        *([note, ""] if (note := paper_note(rows)) else []),
        *(["### Test errors by setting", "", markdown_table(rows, paper=False), ""] if is_comparison(keys) else []),
        *(["### Time to accuracy", "", "Training time until the first validation that reached each accuracy "
           "(training steps and validation passes, tracing and compilation excluded; metrics.json "
           "`validations`), mean ± std over the runs that reached it; reached: runs that did / runs timed. "
           "Validation every `trainer.val_every_steps` steps (else each epoch) sets the resolution.", "",
           table, ""] if (table := time_table(rows)) else []),
        "## Jobs", "",
        "| job | seed | test error % | best val. accuracy % | images/s | checkpoint step |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for job in jobs:
        error = job.evaluation.get("test_error_percent") if job.evaluation else None
        best, speed = job.metrics.get("best_val_accuracy"), job.metrics.get("images_per_second")
        cells = [job.name, job.config.get("seed"), percent_points(error, sign=False),
                 percent(best, sign=False), "n/a" if speed is None else f"{speed:.0f}",
                 job.evaluation.get("step", "n/a") if job.evaluation else "n/a"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _time_csv_cells(stats: dict) -> List[Any]:
    numbers = [*stats["seconds"], *stats["epochs"]]
    return ["" if value is None else repr(float(value)) for value in numbers] + [stats["reached"], stats["runs"]]


def csv_report(rows: Sequence[dict], keys: Sequence[str]) -> str:
    text = io.StringIO()
    targets = sorted({target for row in rows for target in row["time_to_accuracy"]})
    writer = csv.writer(text, lineterminator="\n")
    extras = extra_test_names(rows)
    writer.writerow(["setting", *keys, "n_runs", "n_evaluated", "seeds", "test_error_percent_mean",
                     "test_error_percent_std", *(f"{name}_test_error_percent_{stat}" for name in extras
                                                 for stat in ("mean", "std")),
                     "best_val_accuracy_percent_mean", "best_val_accuracy_percent_std",
                     "best_val_accuracy_percent_max", "images_per_second_mean", "images_per_second_std",
                     *(f"{name}_accuracy_percent_{stat}" for name in extras for stat in ("mean", "std")),
                     "parameters", "macs_per_image", "model", "routing", "jobs", *paper_csv_header(rows),
                     *(f"time_to_{_target_name(target)[:-1]}_{name}" for target in targets
                       for name in ("seconds_mean", "seconds_std", "epochs_mean", "epochs_std", "reached", "runs"))])
    for row in rows:
        extra = [value for name in extras for value in row["extra_test_errors"].get(name, (None, None))]
        accuracy = [value for name in extras for value in row["extra_test_accuracies"].get(name, (None, None))]
        cells = [row["test_error"][0], row["test_error"][1], *extra, row["best_val_accuracy"][0],
                 row["best_val_accuracy"][1], row["best_val_accuracy_max"], *row["images_per_second_stats"],
                 *accuracy]
        numbers = ["" if cell is None else repr(float(cell)) for cell in cells]
        counts = ["" if cell is None else int(cell) for cell in (row["parameters"], row["macs_per_image"])]
        writer.writerow([row["setting"], *[row["values"][key] for key in keys], row["n_runs"], row["n_evaluated"],
                         " ".join(map(str, row["seeds"])), *numbers, *counts, row["model"] or "",
                         row["routing"] or "-", " ".join(row["jobs"]), *paper_csv_cells(row, rows),
                         *(cell for target in targets for cell in _time_csv_cells(row["time_to_accuracy"][target]))])
    return text.getvalue()


def _series_label(values: Dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        if key == "loss.recon_weight":
            parts.append("reconstruction off" if not value else f"reconstruction on ({value})")
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return ", ".join(parts) or "all jobs"


def _paper_test_error(row: dict) -> Optional[Tuple[float, float]]:
    """(mean, std or 0) of the paper's test error % for the row (capsrun.analysis.paper), else None."""
    figure = row.get("paper")
    return (figure.mean, figure.std or 0.0) if figure is not None and figure.measure == TEST_ERROR else None


def figure_png(rows: Sequence[dict], keys: Sequence[str], title: str, dpi: int) -> bytes:
    """report.png: test error (validation error where no job was evaluated) by routing
    iterations, error bars = std over the runs, one series per value of the other keys; beside
    each test error the paper has a figure for, that figure as a hollow diamond of the same colour
    (its error bar the paper's std)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: only when the figure is drawn
    from matplotlib.figure import Figure

    use_test = any(row["test_error"][0] is not None for row in rows)
    x_key = X_KEY if X_KEY in keys else None
    series = {}
    for row in rows:
        rest = {key: value for key, value in row["values"].items() if key != x_key}
        if use_test:
            mean, std = row["test_error"]
        else:
            mean, std = row["best_val_accuracy"]
            mean = None if mean is None else 100.0 - mean
        if mean is not None:
            x = row["values"][x_key] if x_key else row["setting"]
            paper = _paper_test_error(row) if use_test else None
            series.setdefault(_series_label(rest) if x_key else "", []).append((x, mean, std or 0.0, paper))
    figure = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for number, (label, points) in enumerate(series.items()):
        xs, means, stds, papers = zip(*points, strict=True)
        offset = (number - (len(series) - 1) / 2) * 0.04 if x_key else 0.0
        xs = [x + offset for x in xs] if x_key else list(xs)
        drawn = axes.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=label or None,
                              linestyle="-" if x_key else "none")
        beside = 0.015 if x_key else 0.0  # just right of the measured point, so that the error bars stay apart
        marked = [(x + beside if x_key else x, paper) for x, paper in zip(xs, papers, strict=True)
                  if paper is not None]  # without x_key, x is the setting's name (a category)
        if marked:
            axes.errorbar([x for x, _ in marked], [paper[0] for _, paper in marked],
                          yerr=[paper[1] for _, paper in marked], marker="D", markerfacecolor="none", capsize=3,
                          color=drawn.lines[0].get_color(), linestyle="none")
    if any(_paper_test_error(row) for row in rows) and use_test:
        axes.plot([], [], marker="D", markerfacecolor="none", color="grey", linestyle="none",
                  label="paper (Sabour et al. 2017, Table 1)")
    if x_key:
        axes.set_xlabel("routing iterations")
        axes.set_xticks(sorted({row["values"][x_key] for row in rows}))
    else:
        axes.tick_params(axis="x", labelrotation=20)
    runs = sorted({row["n_runs"] for row in rows})
    axes.set_ylabel(("test" if use_test else "validation (no eval.json)") + " error %")
    axes.set_title(f"{'Test' if use_test else 'Validation'} error of {title}\n"
                   f"mean ± std over {'/'.join(map(str, runs))} run(s) per point", fontsize=10)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:  # the labelled series and the paper's marker
        axes.legend()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def row_label(row: dict) -> str:
    """model/routing of a comparison row (the model alone without a routing), plus any other swept value."""
    extra = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in row["values"].items() if key not in COMPARISON_KEYS]
    return (row["model"] if row["routing"] is None else f"{row['model']}/{row['routing']}") \
        + (f" ({', '.join(extra)})" if extra else "")


def tradeoff_png(rows: Sequence[dict], title: str, dpi: int) -> bytes:
    """report.png of a comparison: test error % (validation error where no job was evaluated)
    against training images/s, one labelled point per model / routing, error bars = std over the
    seeds in both directions. Rows without images/s or an error are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: only when the figure is drawn
    from matplotlib.figure import Figure

    use_test = any(row["test_error"][0] is not None for row in rows)
    figure = Figure(figsize=(7.2, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = {}
    for row in rows:
        mean, std = row["test_error"] if use_test else _accuracy(row["best_val_accuracy"])
        speed, speed_std = row["images_per_second_stats"]
        if mean is None or speed is None:
            continue
        marker = "s" if row["routing"] is None else "o"  # squares: models without a routing
        colour = colours.setdefault(row["model"], (f"C{len(colours)}", marker))[0]
        axes.errorbar([speed], [mean], yerr=[std or 0.0], xerr=[speed_std or 0.0], marker=marker, color=colour,
                      capsize=4, linestyle="none")
        axes.annotate(row_label(row), (speed, mean), textcoords="offset points", xytext=(6, 5), fontsize=8)
    for model, (colour, marker) in colours.items():
        axes.plot([], [], marker=marker, color=colour, linestyle="none", label=model)
    axes.set_xlabel("training images/s (last epoch; mean ± std over seeds)")
    axes.set_ylabel(("test" if use_test else "validation (no eval.json)") + " error %")
    runs = sorted({row["n_runs"] for row in rows})
    axes.set_title(f"Error against speed: {title}\nmean ± std over {'/'.join(map(str, runs))} run(s) per point; "
                   "lower right is better", fontsize=10)
    axes.margins(x=0.25, y=0.2)
    axes.grid(alpha=0.3)
    if colours:
        axes.legend(fontsize=8)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def report_png(rows: Sequence[dict], keys: Sequence[str], title: str, dpi: int) -> bytes:
    """report.png: `tradeoff_png` for a model / routing comparison, else `figure_png`."""
    return tradeoff_png(rows, title, dpi) if is_comparison(keys) else figure_png(rows, keys, title, dpi)
