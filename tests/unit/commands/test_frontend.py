"""The one command front-end: --help lists every key with its comment, unknown keys get the
closest key, options are refused, and the exceptions of library code become one line on stderr
and their exit codes."""
import pytest
import yaml
from omegaconf import OmegaConf

from capsrun.commands import COMMANDS
from capsrun.commands.frontend import CommandSpec, command_config, help_text, run
from capsrun.config.keys import flat_keys
from capsrun.config.schema import COMMAND_SCHEMAS
from capsrun.errors import CapsrunError, TrainingDiverged, TrainingInterrupted
from tests.conftest import REPO

SPECS = {name: __import__(module, fromlist=["SPEC"]).SPEC for name, (module, _) in COMMANDS.items() if name != "train"}


def test_every_command_but_train_has_a_spec_and_a_schema():
    assert set(SPECS) == set(COMMAND_SCHEMAS) == set(COMMANDS) - {"train"}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_help_lists_every_key_of_the_command_with_a_comment(name):
    text = help_text(SPECS[name])
    assert text.startswith(f"usage: capsrun {name} ")
    lines = text.splitlines()
    for key in flat_keys(OmegaConf.structured(COMMAND_SCHEMAS[name])):
        leaf = key.rsplit(".", 1)[-1]
        if name == "bench" and key.split(".")[0] in ("data", "model", "loss", "optimizer", "trainer"):
            continue  # the config groups bench composes; their keys are commented in conf/<group>/
        line = next((line for line in lines if line.strip().startswith(f"{leaf}:")), None)
        assert line is not None and "#" in line, (name, key)


def test_help_prints_and_composes_nothing(capsys):
    assert command_config(SPECS["eval"], ["--help"]) is None
    assert "run_dir:" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["run_dir=x", "checkpont=last"], "unknown key 'checkpont' for capsrun eval; did you mean 'checkpoint'?"),
    (["run_dir=x", "--json"], "unknown option --json"),
    (["run_dir=x", "last"], "'last' is not a key=value setting"),
    (["checkpoint=last"], "run_dir is required: capsrun eval run_dir=PATH"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    with pytest.raises(CapsrunError) as error:
        command_config(SPECS["eval"], args)
    assert message in str(error.value) and "\n" not in str(error.value)


def _raising(error):
    def command(args):
        raise error
    return command


@pytest.mark.parametrize("error,code", [
    (CapsrunError("data.path x does not exist"), 2),
    (TrainingDiverged("/runs/a", 7), 4),
    (TrainingInterrupted("/runs/a", "/runs/a/checkpoints/last/ckpt-7", 7, "SIGTERM"), 3),
])
def test_library_exceptions_become_exit_codes(capsys, caplog, error, code):
    assert run("train", _raising(error), []) == code
    stderr = capsys.readouterr().err
    if code == 3:  # a warning in the run's log: it can be resumed
        assert "continue with: capsrun train resume=/runs/a" in caplog.text
    else:
        assert stderr.strip().splitlines() == [f"capsrun train: error: {error}"]


def test_a_command_without_a_spec_of_its_own_still_gets_the_front_end():
    spec = CommandSpec("report", "sweep_dir=PATH", required=(("sweep_dir", "sweep_dir=PATH"),))
    with pytest.raises(CapsrunError, match="sweep_dir is required"):
        command_config(spec, [])


def test_paths_with_equals_signs_and_commas_are_quoted(tmp_path):
    from capsrun.commands import eval, export, predict, visualize
    from capsrun.commands.frontend import quote_paths

    job = tmp_path / "epochs=3,seed=1"
    job.mkdir()
    assert quote_paths([f"run_dir={job}"], eval.SPEC) == [f"run_dir='{job}'"]
    assert quote_paths([f"run_dir=[{job},{tmp_path}]"], eval.SPEC) == [f"run_dir=['{job}','{tmp_path}']"]
    assert quote_paths(["images=a b.png", "output=json"], predict.SPEC) == ["images=['a b.png']", "output=json"]
    assert quote_paths(["indices=[1,2]"], visualize.SPEC) == ["indices=[1,2]"]
    assert quote_paths(["indices=7", "checkpoint=last"], visualize.SPEC) == ["indices=[7]", "checkpoint='last'"]
    assert quote_paths(["output=a b/model"], export.SPEC) == ["output='a b/model'"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_help_says_how_to_see_the_composed_config(name):
    text = help_text(SPECS[name])
    assert "--cfg job" in text and "-cd DIR" in text and "-h, --help" in text


def test_cfg_job_prints_the_composed_config_with_a_user_config_folder(tmp_path, capsys):
    """-cd DIR: DIR/eval.yaml replaces capsrun's; --cfg job prints the result and runs nothing."""
    own = (REPO / "conf" / "eval.yaml").read_text().replace("\nmax_misclassified: 50 ", "\nmax_misclassified: 7 ")
    (tmp_path / "eval.yaml").write_text(own)
    assert command_config(SPECS["eval"], ["-cd", str(tmp_path), "run_dir=x", "dpi=90", "--cfg", "job"]) is None
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["max_misclassified"], printed["dpi"], printed["run_dir"]) == (7, 90, "x")
    cfg = command_config(SPECS["eval"], [f"--config-dir={tmp_path}", "run_dir=x"])
    assert cfg.max_misclassified == 7
    with pytest.raises(CapsrunError, match=r"config folder .*nope \(-cd/--config-dir\) does not exist"):
        command_config(SPECS["eval"], ["-cd", str(tmp_path / "nope"), "run_dir=x"])
