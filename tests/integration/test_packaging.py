"""A non-editable install (`pip install .`) carries the configs and the data, and runs from elsewhere."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_non_editable_install_trains_from_another_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, timeout=600)
    installed = target / "capsrun"
    assert (installed / "conf" / "config.yaml").is_file()
    assert (installed / "conf" / "experiment" / "smoke.yaml").is_file()
    assert len(list((installed / "data" / "bundled" / "mnist").glob("*.gz"))) == 4
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "3"}
    probe = "import capsrun.config.compose as c; print(c.__file__); print(c.config_dir())"
    where = subprocess.run([sys.executable, "-c", probe],
                           cwd=workdir, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(target)) and where[1] == str(installed / "conf")
    result = subprocess.run([str(target / "bin" / "capsrun"), "train", "experiment=smoke"], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [path.parent for path in (workdir / "outputs").rglob("metrics.json")]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
