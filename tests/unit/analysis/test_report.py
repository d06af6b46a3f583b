"""`capsrun report` in-process on hand-made sweep folders: grouping over seeds, the affine column."""
import csv
import json
import statistics

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config


def write_job(folder, routing, recon, seed, error, best, speed, evaluated=True):
    """A finished job folder of a Table 1-shaped sweep: config, metrics.json and eval.json."""
    cfg = compose_config(f"model.routing_iterations={routing}", f"loss.recon_weight={recon}", f"seed={seed}")
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps(
        {"status": "completed", "best_val_accuracy": best, "images_per_second": speed, "global_step": 8}))
    if evaluated:
        (folder / "eval.json").write_text(json.dumps({"test_error_percent": error, "step": 8}))


def test_report_groups_a_table1_shaped_sweep_over_seeds(tmp_path):
    from capsrun.commands.report import report_command

    expected = {}
    for routing in (1, 3):
        for recon in (0, 0.0005):
            for seed in (0, 1, 2):
                error = 0.3 + 0.01 * seed + (0.05 if recon == 0 else 0) + 0.02 * routing
                expected.setdefault((routing, recon), []).append(error)
                write_job(tmp_path / f"loss.recon_weight={recon},model.routing_iterations={routing},seed={seed}",
                          routing, recon, seed, error, 0.99 - seed / 1000, 100.0 + seed,
                          evaluated=seed != 2 or routing != 3)
    (tmp_path / "unfinished" / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(), tmp_path / "unfinished" / ".hydra" / "config.yaml")
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false"]) == 0
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(row["model.routing_iterations"], row["loss.recon_weight"]) for row in rows] == [
        ("1", "0.0"), ("1", "0.0005"), ("3", "0.0"), ("3", "0.0005")]
    for row in rows:
        errors = expected[(int(row["model.routing_iterations"]), float(row["loss.recon_weight"]))]
        evaluated = errors if row["model.routing_iterations"] == "1" else errors[:2]
        assert (int(row["n_runs"]), int(row["n_evaluated"])) == (3, len(evaluated))
        assert float(row["test_error_percent_mean"]) == pytest.approx(statistics.mean(evaluated))
        assert float(row["test_error_percent_std"]) == pytest.approx(statistics.stdev(evaluated))
        assert float(row["best_val_accuracy_percent_max"]) == pytest.approx(99.0)
        assert float(row["images_per_second_mean"]) == pytest.approx(101.0)
    assert "3 (2 evaluated)" in (tmp_path / "report.md").read_text()
    assert "1 not finished, left out" in (tmp_path / "report.md").read_text()


def test_report_sets_capsnet_against_the_cnn_on_the_affine_test_set(tmp_path):
    from capsrun.commands.report import report_command

    for model, errors, affine in (("capsnet", (0.8, 1.0), (20.0, 22.0)), ("baseline_cnn", (0.7, 0.9), (33.0, 35.0))):
        for seed in (0, 1):
            folder = tmp_path / f"model={model},seed={seed}"
            (folder / ".hydra").mkdir(parents=True)
            cfg = compose_config(f"model={model}", "data=affnist", f"seed={seed}")
            OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
            (folder / "metrics.json").write_text(json.dumps({"status": "completed", "best_val_accuracy": 0.99}))
            (folder / "eval.json").write_text(json.dumps({"test_error_percent": errors[seed], "extra_tests": {
                "affine": {"test_error_percent": affine[seed]}}}))
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false"]) == 0
    rows = {row["model.name"]: row for row in csv.DictReader((tmp_path / "report.csv").open())}
    assert float(rows["capsnet"]["affine_test_error_percent_mean"]) == pytest.approx(21.0)
    assert float(rows["baseline_cnn"]["affine_test_error_percent_mean"]) == pytest.approx(34.0)
    assert float(rows["baseline_cnn"]["test_error_percent_mean"]) == pytest.approx(0.8)
    assert "affine test error % (mean ± std)" in (tmp_path / "report.md").read_text()


COMPARISON = {  # (model, routing): (test errors of seeds 0-2, affine errors, images/s, parameters, MACs)
    ("capsnet", "dynamic"): ((0.9, 1.0, 1.1), (20.0, 21.0, 22.0), (60.0, 62.0, 64.0), 8_215_568, 203_202_560),
    ("capsnet", "uniform"): ((1.4, 1.5, 1.6), (30.0, 31.0, 35.0), (100.0, 104.0, 108.0), 8_215_568, 201_359_360),
    ("baseline_cnn", None): ((0.8, 0.8, 0.9), (33.0, 34.0, 35.0), (40.0, 41.0, 42.0), 35_445_522, 1_964_756_352),
}


def write_comparison_job(folder, model, routing, seed):
    errors, affine, speeds, parameters, macs = COMPARISON[(model, routing)]
    cfg = compose_config(f"model={model}", "data=affnist", f"seed={seed}",
                         *([f"model.routing={routing}"] if routing else []))
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({
        "status": "completed", "best_val_accuracy": 0.99, "images_per_second": speeds[seed], "parameters": parameters,
        "macs_per_image": macs, "routing": routing}))
    (folder / "eval.json").write_text(json.dumps({"test_error_percent": errors[seed], "extra_tests": {
        "affine": {"test_error_percent": affine[seed]}}}))


def test_routing_comparison_report_has_one_row_per_model_and_routing_and_the_tradeoff_figure(tmp_path, capsys):
    from capsrun.commands.report import report_command

    for (model, routing) in COMPARISON:
        for seed in (0, 1, 2):
            write_comparison_job(tmp_path / f"model={model},model.routing={routing or 'dynamic'},seed={seed}",
                                 model, routing, seed)
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false"]) == 0
    rows = {(row["model"], row["routing"]): row for row in csv.DictReader((tmp_path / "report.csv").open())}
    assert set(rows) == {("capsnet", "dynamic"), ("capsnet", "uniform"), ("baseline_cnn", "-")}
    for (model, routing), (errors, affine, speeds, parameters, macs) in COMPARISON.items():
        row = rows[(model, routing or "-")]
        assert int(row["parameters"]) == parameters and int(row["macs_per_image"]) == macs
        assert float(row["images_per_second_mean"]) == pytest.approx(statistics.mean(speeds))
        assert float(row["images_per_second_std"]) == pytest.approx(statistics.stdev(speeds))
        assert float(row["test_error_percent_mean"]) == pytest.approx(statistics.mean(errors))
        assert float(row["test_error_percent_std"]) == pytest.approx(statistics.stdev(errors))
        assert float(row["affine_accuracy_percent_mean"]) == pytest.approx(100 - statistics.mean(affine))
        assert float(row["affine_accuracy_percent_std"]) == pytest.approx(statistics.stdev(affine))
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | routing | n runs | parameters | MACs / image | train images/s |")
    assert "affine accuracy % (mean ± std)" in table[0]
    assert "| baseline_cnn | - | 3 | 35,445,522 | 1,964.8M | 41 ± 1.0 | 0.83 ± 0.058 | 66.00 ± 1.000 |" in printed
    assert "| capsnet | uniform | 3 | 8,215,568 | 201.4M | 104 ± 4.0 | 1.50 ± 0.100 | 68.00 ± 2.646 |" in printed
    markdown = (tmp_path / "report.md").read_text()
    assert table[0] in markdown and "affine test error % (mean ± std)" in markdown  # the settings table too
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_runs_without_cost_fields_reads_the_routing_from_the_config(tmp_path):
    from capsrun.analysis.report import Job, job_routing

    capsnet = Job(tmp_path, {"model.name": "capsnet", "model.routing": "max_min"}, {}, None)
    cnn = Job(tmp_path, {"model.name": "baseline_cnn", "model.routing": "dynamic"}, {}, None)
    assert job_routing(capsnet) == "max_min" and job_routing(cnn) is None
    assert job_routing(Job(tmp_path, capsnet.config, {"routing": "uniform"}, None)) == "uniform"
