"""data=smallnorb through the real command line: a smoke-size CapsNet trained on smallNORB files
written in the exact format (tests.helpers.write_smallnorb), with the azimuth split, then `capsrun
eval` reporting the familiar test views and the `novel` ones; and the one-line error of a folder
without the files."""
import json

import pytest

from tests.conftest import last_stderr_line, run_cli
from tests.helpers import smallnorb_info, write_smallnorb

PAIRS = 120  # 40 of them at the 6 familiar azimuths: 8 for validation, 32 = 2 batches of 16 for training
SMOKE_NORB = ["experiment=smoke", "data=smallnorb", "data.val_size=8", "data.train_size=null", "data.test_size=null",
              "batch_size=16", "data.viewpoint_split=azimuth"]


def test_smallnorb_trains_and_eval_reports_familiar_and_novel_viewpoints(tmp_path):
    write_smallnorb(tmp_path / "norb", PAIRS, gz=True)
    run = tmp_path / "run"
    result = run_cli("train", *SMOKE_NORB, f"data.path={tmp_path / 'norb'}", "data.stereo=true", "data.test_crops=13",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["history"][0]["train_reconstruction_loss"] > 0
    assert list((tmp_path / "norb" / ".capsrun_cache").glob("smallnorb-48-*.npz"))
    result = run_cli("eval", f"run_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "eval.json").read_text())
    azimuths = smallnorb_info(PAIRS)[:, 2]
    familiar = int(sum(code in (30, 32, 34, 0, 2, 4) for code in azimuths))
    assert report["data"] == "smallnorb" and report["test_size"] is None
    assert 0 <= report["test_accuracy"] <= 1 and 0 <= report["extra_tests"]["novel"]["test_accuracy"] <= 1
    for numbers in (report, report["extra_tests"]["novel"]):  # scores averaged over the 13 test crops
        assert numbers["test_crops"] == 13 and 0 <= numbers["centre_crop_accuracy"] <= 1
        # per pixel of the reconstructed input, the 32x32 stereo crop (not the stored 48x48 pair)
        assert numbers["reconstruction_error"] == pytest.approx(numbers["reconstruction_loss"] / (32 * 32 * 2))
    counts = {name: sum(map(sum, matrix)) for name, matrix in
              (("test", report["confusion_matrix"]), ("novel", report["extra_tests"]["novel"]["confusion_matrix"]))}
    assert counts == {"test": familiar, "novel": PAIRS - familiar}
    assert (run / "eval_predictions_novel.csv").is_file()
    result = run_cli("visualize", f"run_dir={run}", "num_reconstructions=4", "indices=[0,1]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "reconstructions.png").is_file() and (run / "perturbations.png").is_file()


def test_a_folder_without_the_files_is_one_line_and_exit_2(tmp_path):
    result = run_cli("train", *SMOKE_NORB, f"data.path={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    line = last_stderr_line(result)
    assert "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat" in line and "data.path" in line
    assert "Traceback" not in result.stderr


TINY_EM = ["model=em_capsnet", "loss=spread", "model.em_a=8", "model.em_b=4", "model.em_c=4", "model.em_d=4",
           "model.em_routing_chunk=4", "data.image_size=[24,24]", "data.crop_size=20"]
"""An EM CapsNet small enough for a test: 20x20 crops give 8x8, 3x3 and 1x1 capsule grids."""


def test_a_tiny_em_capsnet_trains_and_evaluates_on_smallnorb_files(tmp_path):
    write_smallnorb(tmp_path / "norb", PAIRS, gz=False)
    run = tmp_path / "run"
    result = run_cli("train", *SMOKE_NORB, *TINY_EM, f"data.path={tmp_path / 'norb'}", "epochs=2",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2
    assert metrics["parameters"] == (5 * 5 * 8 + 8) + (8 * 64 + 64 + 8 * 4 + 4) + 2 * (9 * 4 * 4 * 16 + 8) + (
        4 * 5 * 16 + 10) + 1  # conv1, primary, ConvCaps1 and 2, class capsules, the step counter
    for epoch in metrics["history"]:
        assert epoch["train_spread_loss"] > 0 and 0 <= epoch["val_accuracy"] <= 1
    result = run_cli("eval", f"run_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "eval.json").read_text())
    assert report["model"] == "em_capsnet" and 0 <= report["test_accuracy"] <= 1
    assert report["reconstruction_error"] is None and report["spread_loss"] > 0  # no decoder
    azimuths = smallnorb_info(PAIRS)[:, 2]
    familiar = int(sum(code in (30, 32, 34, 0, 2, 4) for code in azimuths))
    assert sum(map(sum, report["confusion_matrix"])) == familiar
    assert sum(map(sum, report["extra_tests"]["novel"]["confusion_matrix"])) == PAIRS - familiar
