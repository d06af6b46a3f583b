"""The real CLI entry point in-process (capsrun.cli.main): version, usage, unknown commands and the
key=value hint for GNU-style options. Nothing here starts TensorFlow."""
import pytest

from capsrun import __version__
from capsrun.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"capsrun {__version__}"


def test_usage_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "launch", "eval", "visualize", "predict", "export", "bench", "report"):
        assert f"\n  {command} " in out


def test_no_arguments_is_usage_and_exit_2(capsys):
    assert main([]) == 2


def test_unknown_command_names_the_choices(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'; choose one of: train," in capsys.readouterr().err


@pytest.mark.parametrize("args,hint", [
    (["--epochs", "3"], "capsrun train takes key=value overrides (e.g. epochs=...)"),
    (["--batch-size=64"], "(e.g. batch_size=...)"),
])
def test_gnu_style_options_get_the_key_value_form(capsys, args, hint):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("capsrun train: error: unknown option") and hint in err[0]
