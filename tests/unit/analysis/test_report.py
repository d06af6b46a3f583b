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
