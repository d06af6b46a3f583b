"""The real affNIST test set through the real command line: a tiny data=affnist run trained with
`data.affine.path`, evaluated on it and on an `capsrun eval ... data.affine.path=` override.

The .mat files are written here in affNIST's layout (tests/unit/data/test_affnist_files.py) and
hold the run's own first test digits, centred on the 40x40 canvas: through the whole chain
(file -> loader -> eval) the model must then see exactly the images of the top-level test set,
which catches a transposed or mirrored reading."""
import csv
import json
import math
import zipfile

import numpy as np
import pytest

from capsrun.data.generated import pad_to_canvas
from capsrun.data.sources import BUNDLED_MNIST, load_idx_folder
from tests.conftest import last_stderr_line, run_cli
from tests.unit.data.test_affnist_files import write_mat

SMOKE_AFFNIST = ["experiment=smoke", "data=affnist"]  # 256 training digits, one epoch; data.test_size 128
ZIPPED, BATCHES = 40, (12, 12)  # images in test.mat.zip and in the batch folder 1.mat, 2.mat


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def lengths_and_labels(path):
    """Capsule lengths float [N, 10] and labels int [N] of an eval_predictions*.csv."""
    with open(path) as stream:
        rows = list(csv.DictReader(stream))
    return (np.array([[float(row[f"length_{k}"]) for k in range(10)] for row in rows]),
            np.array([int(row["label"]) for row in rows]))


@pytest.fixture(scope="module")
def affnist_files(tmp_path_factory):
    """(test.mat.zip of the first 40 MNIST test digits, folder of 1.mat + 2.mat of the first 24),
    each digit centred on a 40x40 canvas as data=affnist does with its test digits."""
    folder = tmp_path_factory.mktemp("affnist")
    mnist = load_idx_folder(BUNDLED_MNIST)
    digits, labels = pad_to_canvas(mnist["x_test"][..., None], 40)[..., 0], mnist["y_test"].astype(int)
    write_mat(folder / "test.mat", digits[:ZIPPED], labels[:ZIPPED])
    with zipfile.ZipFile(folder / "test.mat.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(folder / "test.mat", "test.mat")
    (folder / "test.mat").unlink()
    start = 0
    for number, size in enumerate(BATCHES, start=1):
        (folder / "test_batches").mkdir(exist_ok=True)
        write_mat(folder / "test_batches" / f"{number}.mat", digits[start:start + size], labels[start:start + size])
        start += size
    return folder / "test.mat.zip", folder / "test_batches"


@pytest.fixture(scope="module")
def affnist_run(tmp_path_factory, affnist_files):
    run = tmp_path_factory.mktemp("affnist_run") / "run"
    ok(run_cli("train", *SMOKE_AFFNIST, f"data.affine.path={affnist_files[0]}", f"hydra.run.dir={run}"))
    return run


def check_affnist_report(run, result, count):
    report = json.loads((run / "eval.json").read_text())
    assert list(report["extra_tests"]) == ["affnist"] and report["num_examples"] == 128
    affnist = report["extra_tests"]["affnist"]
    assert affnist["num_examples"] == count == sum(affnist["per_class_count"])
    assert math.isfinite(affnist["test_accuracy"]) and 0 <= affnist["test_accuracy"] <= 1
    assert f"  {'affnist test set':<22}accuracy {affnist['test_accuracy']:.2%} (error" in result.stdout
    lengths, labels = lengths_and_labels(run / "eval_predictions_affnist.csv")
    test_lengths, test_labels = lengths_and_labels(run / "eval_predictions.csv")
    assert len(labels) == count and np.array_equal(labels, test_labels[:count])
    np.testing.assert_allclose(lengths, test_lengths[:count], atol=2e-5)  # the same digits, the same way up
    assert (run / "confusion_matrix_affnist.png").is_file() and not (run / "eval_predictions_affine.csv").exists()


def test_eval_reports_the_affnist_files_of_the_run_and_of_an_override(affnist_run, affnist_files):
    saved = ok(run_cli("eval", f"run_dir={affnist_run}"))  # the run's own data.affine.path (the zip)
    check_affnist_report(affnist_run, saved, ZIPPED)
    override = ok(run_cli("eval", f"run_dir={affnist_run}", f"data.affine.path={affnist_files[1]}"))
    check_affnist_report(affnist_run, override, sum(BATCHES))


def test_eval_with_a_missing_affnist_path_is_one_line_exit_2(affnist_run, tmp_path):
    result = run_cli("eval", f"run_dir={affnist_run}", f"data.affine.path={tmp_path / 'test.mat.zip'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "test.mat.zip does not exist" in last_stderr_line(result)
