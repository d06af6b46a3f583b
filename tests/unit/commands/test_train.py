"""`capsrun train`'s own flags: the user's config folder, its resume, and -m with --cfg."""
import pytest
import yaml

from capsrun.commands.train import config_sources, resume_sources, train_command
from capsrun.errors import CapsrunError


def fake_run(folder, main, searchpath=()):
    (folder / ".hydra").mkdir(parents=True)
    sources = [{"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
               {"path": str(main), "schema": "file", "provider": "main"}]
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {
        "runtime": {"config_sources": sources}, "overrides": {"hydra": list(searchpath), "task": []}}}))
    return folder


def test_a_resumed_run_reads_the_config_folders_it_was_trained_with(tmp_path):
    mine = tmp_path / "myconf"
    mine.mkdir()
    run = fake_run(tmp_path / "run", mine, ["hydra.searchpath=[file:///x]"])
    overrides, user_dir = resume_sources([f"resume={run}", "epochs=3"], None)
    assert user_dir == str(mine) and overrides[0] == "hydra.searchpath=[file:///x]"
    assert resume_sources([f"resume={run}"], "/given")[1] == "/given"  # -cd on the command line wins
    mine.rmdir()
    with pytest.raises(CapsrunError, match="which no longer exists; pass that config folder again with -cd DIR"):
        resume_sources([f"resume={run}"], None)


def test_config_flags(tmp_path):
    assert config_sources(["-cd", str(tmp_path), "-m", "--config-name", "other"]) == (str(tmp_path), "other", ["-m"])
    with pytest.raises(CapsrunError, match="use -cd DIR"):
        config_sources(["-cp", str(tmp_path)])
    with pytest.raises(CapsrunError, match="drop -m"):
        train_command(["-m", "seed=0,1", "--cfg", "job"])
