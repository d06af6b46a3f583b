"""The paper's published figures, in one place, and how `capsrun report` sets them beside the
measured ones: a "paper ..." and a "gap (pp)" column, and a footnote naming the source.

Source of every figure below: Sabour, Frost & Hinton (2017), "Dynamic Routing Between Capsules",
NIPS 2017 (arXiv:1710.09829). Table 1: test error %, mean ± std over 3 trials, on MNIST
(baseline CNN 0.39, no std given; CapsNet routing 1 / 3 without and with the reconstruction
loss) and on MultiMNIST (one figure per setting, none for the settings without reconstruction).
Section 5.2: trained on translated MNIST on a 40x40 canvas until 99.23% (CapsNet) / 99.22%
(baseline CNN) on the expanded MNIST test set, the CapsNet reached 79% accuracy on affNIST and the
baseline CNN 66%.

A sweep is compared with the paper (`paper_figures`) when all its jobs trained on one data set of
the paper and the only keys it varies, besides the seed, are those that tell the paper's rows
apart (`PAPER_KEYS`, plus model keys that change only with the model). A setting then gets the
paper's figure if its data, model, routing, routing iterations and reconstruction are those of a
paper row. Everything else of capsrun's setup (epochs, validation hold-out, conventions) may still
differ from the paper's, which the footnote says.

The row dicts read here are those of capsrun.analysis.report.summarise; this module imports
nothing of capsrun, so that report.py can use it without a cycle.
"""
import json
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

SOURCE = "Sabour, Frost & Hinton (2017), *Dynamic Routing Between Capsules* (NIPS 2017, arXiv:1710.09829)"


@dataclass(frozen=True)
class PaperFigure:
    """One figure of the paper. `measure` is the measured quantity it sits beside: "test error"
    (the test set's error %) or "affine accuracy" (accuracy % on the affine test set); `mean` and
    `std` are in % (std None where the paper gives none); `data` is the data set's name."""

    data: str
    measure: str
    mean: float
    std: Optional[float] = None


TEST_ERROR = "test error"
AFFINE_ACCURACY = "affine accuracy"

PaperKey = Tuple[str, str, Optional[int], Optional[bool]]
"""(data.name, model.name, routing iterations, reconstruction on); None, None for the baseline
CNN, which has neither."""

PAPER_FIGURES: Dict[PaperKey, PaperFigure] = {
    # Table 1, MNIST column: test error %, mean ± std over 3 trials.
    ("mnist", "baseline_cnn", None, None): PaperFigure("mnist", TEST_ERROR, 0.39),
    ("mnist", "capsnet", 1, False): PaperFigure("mnist", TEST_ERROR, 0.34, 0.032),
    ("mnist", "capsnet", 1, True): PaperFigure("mnist", TEST_ERROR, 0.29, 0.011),
    ("mnist", "capsnet", 3, False): PaperFigure("mnist", TEST_ERROR, 0.35, 0.036),
    ("mnist", "capsnet", 3, True): PaperFigure("mnist", TEST_ERROR, 0.25, 0.005),
    # Table 1, MultiMNIST column: test error %, no std; "-" for routing 1 and 3 without
    # reconstruction. (Section 6's text quotes 5.0% for the CapsNet; Table 1 has 5.2.)
    ("multimnist", "baseline_cnn", None, None): PaperFigure("multimnist", TEST_ERROR, 8.1),
    ("multimnist", "capsnet", 1, True): PaperFigure("multimnist", TEST_ERROR, 7.5),
    ("multimnist", "capsnet", 3, True): PaperFigure("multimnist", TEST_ERROR, 5.2),
    # Section 5.2: accuracy % on affNIST. The section names no routing setting; it is taken to be
    # the paper's standard CapsNet (3 iterations, reconstruction loss), as in the rest of the paper.
    ("affnist", "capsnet", 3, True): PaperFigure("affnist", AFFINE_ACCURACY, 79.0),
    ("affnist", "baseline_cnn", None, None): PaperFigure("affnist", AFFINE_ACCURACY, 66.0),
}

NOTES = {
    "mnist": "Table 1, MNIST column: test error %, mean ± std over 3 trials (the baseline CNN without a std)",
    "multimnist": "Table 1, MultiMNIST column: test error %, one figure per setting (no std; none for the "
                  "settings without reconstruction)",
    "affnist": "section 5.2: accuracy % on affNIST after training on translated 40x40 MNIST to 99.23% (CapsNet) / "
               "99.22% (baseline CNN) on its expanded test set; capsrun's affine set is generated affNIST-style, "
               "not affNIST itself",
}
"""What the paper column of each data set holds, for the footnote."""

PAPER_KEYS = ("model.name", "model.routing", "model.routing_iterations", "loss.recon_weight")
"""The config keys the paper's rows differ in: a sweep varying any other key (besides the seed,
and model keys that follow the model) is not compared with the paper."""


def paper_key(config: Mapping) -> Optional[PaperKey]:
    """The key of PAPER_FIGURES the flat config {dotted key: value} of a job would have: None for
    a model the paper has no figure of, or a CapsNet whose routing is not dynamic routing."""
    data, model = config.get("data.name"), config.get("model.name")
    if model == "baseline_cnn":
        return data, model, None, None
    if model != "capsnet" or config.get("model.routing") != "dynamic":
        return None
    recon = config.get("loss.recon_weight")
    return data, model, config.get("model.routing_iterations"), None if recon is None else float(recon) > 0


def _only_follows_the_model(configs: Sequence[Mapping], key: str) -> bool:
    """True when `key` is a model key constant among the jobs of each model (it varies only
    because the sweep varies model.name, e.g. efficient_capsnet's own capsule sizes)."""
    if not key.startswith("model."):
        return False
    values = {}
    for config in configs:
        values.setdefault(config.get("model.name"), set()).add(json.dumps(config.get(key), sort_keys=True))
    return all(len(seen) == 1 for seen in values.values())


def compared_with_paper(configs: Sequence[Mapping], varying: Sequence[str]) -> bool:
    """True for a sweep to set beside the paper: every job (flat config) on the same data set, one
    the paper reports on, and no key in `varying` (the keys that differ between the jobs, other
    than the seed) beyond PAPER_KEYS and model keys that follow the model."""
    data = {config.get("data.name") for config in configs}
    if len(data) != 1 or not any(key[0] in data for key in PAPER_FIGURES):
        return False
    return all(key in PAPER_KEYS or _only_follows_the_model(configs, key) for key in varying)


def paper_figures(groups: Sequence[Sequence[Mapping]], varying: Sequence[str]) -> List[Optional[PaperFigure]]:
    """The paper's figure for each group of jobs (a row of the report; each job a flat config),
    None where there is none: for every group when the sweep is not `compared_with_paper`, and for
    a group whose jobs are not all the same paper setting (e.g. grouped over it by `group_by`)."""
    configs = [config for group in groups for config in group]
    if not compared_with_paper(configs, varying):
        return [None] * len(groups)
    figures = []
    for group in groups:
        keys = {paper_key(config) for config in group}
        figures.append(PAPER_FIGURES.get(keys.pop()) if len(keys) == 1 else None)
    return figures


def _measures(rows: Sequence[dict]) -> List[str]:
    return sorted({row["paper"].measure for row in rows if row.get("paper")})


def _measured(row: dict, measure: str, as_error: bool) -> Optional[float]:
    """The row's measured mean beside a paper figure of `measure`, in the table's terms: the
    affine accuracy, or its error (100 - accuracy) in a table of errors (`as_error`)."""
    if measure == TEST_ERROR:
        return row["test_error"][0]
    mean = row["extra_test_errors"].get(affine_set([row]), (None, None))[0]
    if mean is None:
        return None
    return mean if as_error else 100.0 - mean


def _paper_value(figure: PaperFigure, as_error: bool) -> float:
    return 100.0 - figure.mean if figure.measure == AFFINE_ACCURACY and as_error else figure.mean


def affine_set(rows: Sequence[dict]) -> str:
    """The extra test set the paper's affNIST figure compares with: `affnist` (the real affNIST
    test set, data.affine.path) where the rows have it, else `affine` (the generated one)."""
    return "affnist" if any("affnist" in row["extra_test_errors"] for row in rows) else "affine"


def beside_column(measure: str, as_error: bool, affine: str = "affine") -> str:
    """The header stem of the measured column a paper figure of `measure` sits beside (`affine`:
    the name of the affine test set, see `affine_set`)."""
    if measure == TEST_ERROR:
        return "test error %"
    return f"{affine} test error %" if as_error else f"{affine} accuracy %"


def paper_headers(rows: Sequence[dict], as_error: bool = False) -> List[Tuple[str, str, List[str]]]:
    """For each measure the rows have a paper figure of: (the measure, the header stem of the
    measured column it goes after, [the paper column's header, the gap column's header]); [] for
    a sweep not compared with the paper. `as_error`: the table shows the affine set's error, not
    its accuracy."""
    stems = {measure: beside_column(measure, as_error, affine_set(rows)) for measure in _measures(rows)}
    return [(measure, stem, [f"paper {stem}", "gap (pp)"]) for measure, stem in stems.items()]


def paper_cells(row: dict, measure: str, as_error: bool = False) -> List[str]:
    """The row's two cells for `measure`: the paper's figure as the paper prints it (mean ± std,
    `0.39` without a std) and the gap, measured mean - paper in percentage points with its sign;
    "—" for both where the paper has no figure, "n/a" for the gap where nothing was measured."""
    figure = row.get("paper")
    if figure is None or figure.measure != measure:
        return ["—", "—"]
    paper = _paper_value(figure, as_error)
    measured = _measured(row, measure, as_error)
    text = f"{paper:g}" + ("" if figure.std is None else f" ± {figure.std:g}")
    return [text, "n/a" if measured is None else f"{round(measured - paper, 2) + 0.0:+.2f}"]  # + 0.0: no -0.00


def paper_csv_header(rows: Sequence[dict]) -> List[str]:
    """report.csv's paper columns (after all the others): per measure, the paper's mean and std
    and the gap; e.g. paper_test_error_percent, paper_test_error_percent_std,
    test_error_gap_percent_points. [] for a sweep not compared with the paper."""
    return [name for measure in _measures(rows) for slug in [measure.replace(" ", "_")]
            for name in (f"paper_{slug}_percent", f"paper_{slug}_percent_std", f"{slug}_gap_percent_points")]


def paper_csv_cells(row: dict, rows: Sequence[dict]) -> List[str]:
    """The row's cells under `paper_csv_header(rows)`, full precision, empty where there is none
    (the affine set as accuracy, as report.csv's other affine columns)."""
    cells = []
    for measure in _measures(rows):
        figure = row.get("paper")
        if figure is None or figure.measure != measure:
            cells += ["", "", ""]
            continue
        measured = _measured(row, measure, as_error=False)
        cells += [repr(figure.mean), "" if figure.std is None else repr(figure.std),
                  "" if measured is None else repr(measured - figure.mean)]
    return cells


def paper_note(rows: Sequence[dict]) -> Optional[str]:
    """The footnote under a table with paper columns (None without): the source, what the column
    holds, the sign of the gap, and that capsrun's setup is not the paper's."""
    data = sorted({row["paper"].data for row in rows if row.get("paper")})
    if not data:
        return None
    return (f"Paper: {SOURCE}, {'; '.join(NOTES[name] for name in data)}. gap (pp) = measured mean − paper, in "
            "percentage points (a positive gap in error is worse than the paper, in accuracy better); — = no paper "
            "figure for that setting. capsrun's setup differs from the paper's (number of epochs, the validation "
            "hold-out, the training conventions of `convention=paper` or `official`: see docs/reproduction.md), "
            "so a gap measures the setups as much as the code.")
