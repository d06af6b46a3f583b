"""`capsrun report` in-process on hand-made sweep folders: grouping over seeds, the affine column, the
paper's figures beside Table 1, MultiMNIST and affine sweeps."""
import csv
import json
import statistics

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config


def write_job(folder, routing, recon, seed, error, best, speed, evaluated=True, overrides=()):
    """A finished job folder of a Table 1-shaped sweep: config, metrics.json and eval.json."""
    cfg = compose_config(f"model.routing_iterations={routing}", f"loss.recon_weight={recon}", f"seed={seed}",
                         *overrides)
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


PAPER_TABLE1 = {(1, 0): (0.34, 0.032), (1, 0.0005): (0.29, 0.011), (3, 0): (0.35, 0.036), (3, 0.0005): (0.25, 0.005)}
"""Sabour et al. (2017), Table 1, MNIST: (routing iterations, reconstruction weight) -> test error % mean, std."""


def test_table1_report_sets_the_papers_figure_and_the_gap_beside_each_setting(tmp_path, capsys):
    from capsrun.commands.report import report_command

    measured = {(1, 0): 0.40, (1, 0.0005): 0.30, (3, 0): 0.33, (3, 0.0005): 0.31, ("baseline_cnn",): 0.50}
    for (routing, recon), _ in PAPER_TABLE1.items():
        for seed in (0, 1):
            write_job(tmp_path / f"loss.recon_weight={recon},model.routing_iterations={routing},seed={seed}",
                      routing, recon, seed, measured[(routing, recon)] + 0.02 * seed, 0.99, 100.0)
    for seed in (0, 1):  # the baseline CNN trained into the same folder (it ignores the two keys)
        write_job(tmp_path / f"model=baseline_cnn,seed={seed}", 3, 0.0005, seed, 0.50 + 0.02 * seed, 0.99, 40.0,
                  overrides=["model=baseline_cnn"])
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false"]) == 0
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(rows) == 5
    for row in rows:
        if row["model.name"] == "baseline_cnn":
            paper, std, mean = 0.39, "", 0.51
        else:
            setting = (int(row["model.routing_iterations"]), float(row["loss.recon_weight"]))
            (paper, std), mean = PAPER_TABLE1[setting], measured[setting] + 0.01
        assert float(row["paper_test_error_percent"]) == paper
        assert row["paper_test_error_percent_std"] == ("" if std == "" else repr(std))
        assert float(row["test_error_gap_percent_points"]) == pytest.approx(mean - paper)
        assert float(row["test_error_percent_mean"]) == pytest.approx(mean)  # the measured columns stay
    markdown = (tmp_path / "report.md").read_text()
    header = "| setting | n runs | test error % (mean ± std) | paper test error % | gap (pp) | best val. accuracy %"
    assert header in markdown
    expected_rows = {  # setting: measured test error, paper's figure, gap
        "routing_iterations=1, recon_weight=0.0, name=capsnet": "0.41 ± 0.014 | 0.34 ± 0.032 | +0.07",
        "routing_iterations=3, recon_weight=0.0005, name=capsnet": "0.32 ± 0.014 | 0.25 ± 0.005 | +0.07",
        "routing_iterations=3, recon_weight=0.0, name=capsnet": "0.34 ± 0.014 | 0.35 ± 0.036 | -0.01",
        "routing_iterations=3, recon_weight=0.0005, name=baseline_cnn": "0.51 ± 0.014 | 0.39 | +0.12"}
    for setting, cells in expected_rows.items():
        assert f"| {setting} | 2 | {cells} |" in markdown
    note = next(line for line in markdown.splitlines() if line.startswith("Paper: "))
    assert "Sabour, Frost & Hinton (2017)" in note and "Table 1, MNIST" in note and "docs/reproduction.md" in note
    assert note in capsys.readouterr().out  # printed under the table too
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # with the paper's points


@pytest.mark.parametrize("case", ["lr_sweep", "other_data", "grouped_over_reconstruction"])
def test_a_sweep_the_paper_has_no_figure_for_gets_no_paper_columns(tmp_path, case):
    from capsrun.commands.report import report_command

    extra = ["data=fashion_mnist"] if case == "other_data" else []
    for number, (routing, recon) in enumerate(PAPER_TABLE1):
        for seed in (0, 1):
            lr = ["optimizer.lr=0.01"] if case == "lr_sweep" and number % 2 else []
            write_job(tmp_path / f"job{number},seed={seed}", routing, recon, seed, 0.3, 0.99, 100.0,
                      overrides=[*extra, *lr])
    group_by = ["group_by=[model.routing_iterations]"] if case == "grouped_over_reconstruction" else []
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false", *group_by]) == 0
    header = (tmp_path / "report.csv").read_text().splitlines()[0]
    assert "paper" not in header and "gap" not in header
    markdown = (tmp_path / "report.md").read_text()
    assert "paper test error" not in markdown and "gap (pp)" not in markdown and "Sabour" not in markdown


def write_affine_job(folder, overrides, seed, affine_error, name="affine", generated_error=None):
    """A finished data=affnist job whose eval.json has the extra test set `name` (affine: the
    generated one; affnist: the real affNIST files), and the generated one too with `generated_error`."""
    cfg = compose_config("data=affnist", f"seed={seed}", *overrides)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "best_val_accuracy": 0.99}))
    extra = {name: {"test_error_percent": affine_error}}
    if generated_error is not None:
        extra["affine"] = {"test_error_percent": generated_error}
    (folder / "eval.json").write_text(json.dumps({"test_error_percent": 0.8, "extra_tests": extra}))


def test_the_papers_affnist_figure_sits_beside_the_real_affnist_set_where_a_job_has_it(tmp_path):
    from capsrun.commands.report import report_command

    for seed in (0, 1):
        write_affine_job(tmp_path / f"capsnet,seed={seed}", ["model=capsnet"], seed, 22.0, name="affnist",
                         generated_error=30.0 if seed else None)
        write_affine_job(tmp_path / f"cnn,seed={seed}", ["model=baseline_cnn"], seed, 35.0, name="affnist")
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false"]) == 0
    rows = {row["model"]: row for row in csv.DictReader((tmp_path / "report.csv").open())}
    assert float(rows["capsnet"]["affine_accuracy_gap_percent_points"]) == pytest.approx(78.0 - 79.0)
    assert float(rows["baseline_cnn"]["affine_accuracy_gap_percent_points"]) == pytest.approx(65.0 - 66.0)
    assert "| affnist accuracy % (mean ± std) | paper affnist accuracy % | gap (pp) |" in (
        tmp_path / "report.md").read_text()


def test_affnist_reports_set_the_papers_affine_accuracy_beside_the_measured_one(tmp_path):
    from capsrun.commands.report import report_command

    comparison, settings = tmp_path / "comparison", tmp_path / "settings"
    for seed in (0, 1):  # a comparison of models and routings: the affine set as accuracy
        write_affine_job(comparison / f"capsnet,seed={seed}", ["model=capsnet"], seed, 24.0 + 2 * seed)  # 75%
        write_affine_job(comparison / f"uniform,seed={seed}", ["model.routing=uniform"], seed, 40.0)
        write_affine_job(comparison / f"cnn,seed={seed}", ["model=baseline_cnn"], seed, 30.0 + 2 * seed)  # 69%
    assert report_command([f"sweep_dir={comparison}", "evaluate=false"]) == 0
    rows = {(row["model"], row["routing"]): row for row in csv.DictReader((comparison / "report.csv").open())}
    assert float(rows["capsnet", "dynamic"]["paper_affine_accuracy_percent"]) == 79.0
    assert float(rows["capsnet", "dynamic"]["affine_accuracy_gap_percent_points"]) == pytest.approx(75.0 - 79.0)
    assert float(rows["baseline_cnn", "-"]["paper_affine_accuracy_percent"]) == 66.0
    assert float(rows["baseline_cnn", "-"]["affine_accuracy_gap_percent_points"]) == pytest.approx(69.0 - 66.0)
    assert rows["capsnet", "uniform"]["paper_affine_accuracy_percent"] == ""  # the paper routes dynamically
    markdown = (comparison / "report.md").read_text()
    assert "| affine accuracy % (mean ± std) | paper affine accuracy % | gap (pp) |" in markdown
    assert "| 75.00 ± 1.414 | 79 | -4.00 |" in markdown and "| 69.00 ± 1.414 | 66 | +3.00 |" in markdown
    assert "| 60.00 ± 0.000 | — | — |" in markdown and "section 5.2" in markdown
    for recon in (0, 0.0005):  # a table of settings: the affine set as error, so the paper's as 100 - 79
        for seed in (0, 1):
            write_affine_job(settings / f"recon={recon},seed={seed}", [f"loss.recon_weight={recon}"], seed, 25.0)
    assert report_command([f"sweep_dir={settings}", "evaluate=false"]) == 0
    markdown = (settings / "report.md").read_text()
    assert "| affine test error % (mean ± std) | paper affine test error % | gap (pp) |" in markdown
    assert "| recon_weight=0.0005 | 2 | 0.80 ± 0.000 | 25.00 ± 0.000 | 21 | +4.00 |" in markdown
    assert "| recon_weight=0.0 | 2 | 0.80 ± 0.000 | 25.00 ± 0.000 | — | — |" in markdown


def test_multimnist_settings_get_table1s_multimnist_column_where_it_has_one():
    from capsrun.analysis.paper import paper_figures

    def config(model, routing, recon, data="multimnist"):
        return {"data.name": data, "model.name": model, "model.routing": "dynamic",
                "model.routing_iterations": routing, "loss.recon_weight": recon}

    groups = [[config("capsnet", 3, 0.0005)], [config("capsnet", 1, 0.0005)], [config("capsnet", 3, 0.0)],
              [config("baseline_cnn", 3, 0.0005)]]
    varying = ["model.routing_iterations", "loss.recon_weight", "model.name"]
    assert [figure and figure.mean for figure in paper_figures(groups, varying)] == [5.2, 7.5, None, 8.1]
    mixed = [[config("capsnet", 3, 0.0005), config("capsnet", 3, 0.0005, data="mnist")]]
    assert paper_figures(mixed, ["data.name"]) == [None]  # two data sets: not a paper sweep


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


def write_timed_job(folder, lr, seed, validations, target=0.985):
    """A finished job of a learning-rate sweep trained with trainer.target_val_accuracy=`target`;
    `validations` [(step, seconds, accuracy)]."""
    cfg = compose_config(f"optimizer.lr={lr}", f"seed={seed}", f"trainer.target_val_accuracy={target}")
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    records = [{"step": step, "epoch": step / 8, "seconds": seconds, "accuracy": accuracy, "loss": 0.1}
               for step, seconds, accuracy in validations]
    (folder / "metrics.json").write_text(json.dumps(
        {"status": "completed", "best_val_accuracy": max(r["accuracy"] for r in records), "images_per_second": 100.0,
         "global_step": records[-1]["step"], "target_val_accuracy": target, "validations": records}))
    (folder / "eval.json").write_text(json.dumps({"test_error_percent": 1.0, "step": records[-1]["step"]}))


def test_report_gives_time_to_each_target_over_seeds_and_counts_the_runs_that_never_reached_it(tmp_path, capsys):
    from capsrun.commands.report import report_command

    runs = {  # lr -> one validation list per seed: (step, seconds, accuracy)
        0.001: [[(4, 10.0, 0.97), (8, 20.0, 0.986), (12, 30.0, 0.991)],
                [(4, 11.0, 0.985), (8, 22.0, 0.989), (12, 33.0, 0.992)],
                [(4, 9.0, 0.96), (8, 18.0, 0.98), (12, 27.0, 0.984)]],  # never reaches 98.5%
        0.002: [[(4, 10.0, 0.99), (8, 20.0, 0.995)], [(4, 12.0, 0.98), (8, 24.0, 0.991)]],
    }
    for lr, seeds in runs.items():
        for seed, validations in enumerate(seeds):
            write_timed_job(tmp_path / f"optimizer.lr={lr},seed={seed}", lr, seed, validations)
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false"]) == 0
    rows = {float(row["optimizer.lr"]): row for row in csv.DictReader((tmp_path / "report.csv").open())}
    slow, fast = rows[0.001], rows[0.002]
    assert float(slow["time_to_98.5_seconds_mean"]) == pytest.approx(15.5)  # 20 s and 11 s; seed 2 never
    assert float(slow["time_to_98.5_seconds_std"]) == pytest.approx(statistics.stdev([20.0, 11.0]))
    assert float(slow["time_to_98.5_epochs_mean"]) == pytest.approx((1.0 + 0.5) / 2)
    assert (slow["time_to_98.5_reached"], slow["time_to_98.5_runs"]) == ("2", "3")
    assert float(fast["time_to_98.5_seconds_mean"]) == pytest.approx(17.0)  # 10 s, and 24 s (98% < 98.5%)
    assert fast["time_to_98.5_reached"] == "2"
    markdown = (tmp_path / "report.md").read_text()
    assert "### Time to accuracy" in markdown and "| 15.5 ± 6.4 | 0.75 ± 0.35 | 2/3 |" in markdown
    assert "Time to accuracy" in capsys.readouterr().out
    # other targets, asked of the finished runs: 99% is reached by 2 of 3 and 2 of 2
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false", "time_targets=[0.99]"]) == 0
    rows = {float(row["optimizer.lr"]): row for row in csv.DictReader((tmp_path / "report.csv").open())}
    assert float(rows[0.001]["time_to_99_seconds_mean"]) == pytest.approx(31.5)
    assert rows[0.001]["time_to_99_reached"] == "2" and "time_to_98.5_reached" not in rows[0.001]
    assert float(rows[0.002]["time_to_99_seconds_mean"]) == pytest.approx(17.0)


def test_a_sweep_without_targets_has_no_time_table_and_bad_targets_are_one_line_errors(tmp_path):
    from capsrun.commands.report import report_command
    from capsrun.errors import CapsrunError

    for seed in (0, 1):
        write_job(tmp_path / f"seed={seed}", 3, 0.0005, seed, 0.3, 0.99, 100.0)
    assert report_command([f"sweep_dir={tmp_path}", "evaluate=false"]) == 0
    assert "Time to accuracy" not in (tmp_path / "report.md").read_text()
    assert not any(name.startswith("time_to") for name in next(csv.reader((tmp_path / "report.csv").open())))
    with pytest.raises(CapsrunError, match=r"time_targets must be validation accuracies as fractions"):
        report_command([f"sweep_dir={tmp_path}", "evaluate=false", "time_targets=[98.5]"])
