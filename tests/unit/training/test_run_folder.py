"""The run folder: finding runs and sweeps, and damaged run files (config, overrides, metrics.json)
as one-line errors that name the file."""
import json

import pytest
from omegaconf import OmegaConf

from capsrun.errors import CapsrunError
from capsrun.training.history import RunHistory
from capsrun.training.run_folder import expand_run_dirs, find_jobs, load_run_config, load_run_overrides
from tests.conftest import compose_config


def _run(folder):
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(["experiment=smoke", "epochs=2"]), folder / ".hydra" / "overrides.yaml")
    return folder


def test_multirun_folders_expand_to_their_jobs_in_natural_order(tmp_path):
    for seed in (10, 2, 1):
        _run(tmp_path / "sweep" / f"seed={seed}")
    assert [run.name for run in expand_run_dirs(str(tmp_path / "sweep"))] == ["seed=1", "seed=2", "seed=10"]
    sweep, jobs = find_jobs(tmp_path / "sweep")
    assert sweep == (tmp_path / "sweep").absolute() and len(jobs) == 3
    with pytest.raises(CapsrunError, match="is a single run, not a sweep"):
        find_jobs(jobs[0])


def test_a_run_folder_reads_back(tmp_path):
    run = _run(tmp_path / "run")
    assert load_run_config(run).epochs == 1 and load_run_overrides(run) == ["experiment=smoke", "epochs=2"]


@pytest.mark.parametrize("name,content", [
    ("config.yaml", "seed: [0\nepochs: 1\n"),               # a YAML syntax error (an interrupted copy)
    ("config.yaml", "- seed\n- epochs\n"),                   # a list, not a mapping of keys
    ("config.yaml", b"seed: 0\n\xff\xfe\x00"),               # binary junk
    ("overrides.yaml", "{epochs: 2\n"),
    ("overrides.yaml", "epochs: 2\n"),                       # a mapping where a list belongs
])
def test_damaged_run_files_are_one_line_errors_naming_the_file(tmp_path, name, content):
    run = _run(tmp_path / "run")
    path = run / ".hydra" / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CapsrunError) as error:
        load_run_config(run) if name == "config.yaml" else load_run_overrides(run)
    message = str(error.value)
    assert message.startswith(f"{path} is damaged") and "\n" not in message


@pytest.mark.parametrize("content", ['{"status": "running", "history": [{"epoch": 1', '["not", "metrics"]',
                                     '{"history": [{"step": 3}]}', '{"validations": [{"step": "3"}]}'])
def test_a_damaged_metrics_json_is_a_one_line_error_when_resuming(tmp_path, content):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(CapsrunError) as error:
        RunHistory(tmp_path).load(tmp_path, epochs_done=1, global_step=8)
    assert str(error.value).startswith(f"{tmp_path / 'metrics.json'} is damaged") and "\n" not in str(error.value)


def test_a_sound_metrics_json_continues_the_history(tmp_path):
    history = [{"epoch": 1, "step": 8}, {"epoch": 2, "step": 16}]
    validations = [{"step": step, "accuracy": 0.5} for step in (4, 8, 12, 16)]
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "interrupted", "history": history,
                                                       "validations": validations}))
    resumed = RunHistory(tmp_path)
    resumed.load(tmp_path, epochs_done=1, global_step=12)  # the checkpoint of step 12, inside epoch 2
    assert resumed.records == history[:1]
    assert resumed.validations == validations[:3]
