"""Hydra composition: a config-group option that does not exist lists the group's options and
the closest one; a missing Hydra plugin names the extra that installs it."""
import pytest

from capsrun.config.compose import check_train_overrides, compose
from capsrun.errors import CapsrunError


@pytest.mark.parametrize("override,options,closest", [
    ("experiment=smok", "affine_robustness, cifar10, demo, efficient_capsnet, fashion_mnist, multimnist, "
     "routing_comparison, smallnorb_capsnet, smallnorb_em, smoke, table1", "experiment=smoke"),
    ("data=mnsit", "affnist, cifar10, fashion_mnist, folder, mnist, multimnist, npz, smallnorb", "data=mnist"),
    ("model=capsnett", "baseline_cnn, capsnet, efficient_capsnet, em_capsnet", "model=capsnet"),
])
def test_a_missing_group_option_lists_the_options_and_the_closest(override, options, closest):
    with pytest.raises(CapsrunError) as error:
        compose("config", [override])
    message = str(error.value)
    assert f"choose one of {options}; did you mean '{closest}'?" in message and "\n" not in message


def test_every_job_of_a_sweep_is_checked_before_the_first_runs():
    with pytest.raises(CapsrunError, match="there is no model 'capsnett'"):
        check_train_overrides(["experiment=smoke", "model=capsnet,capsnett"])


def test_a_missing_launcher_plugin_names_the_extra():
    with pytest.raises(CapsrunError, match=r"pip install 'capsrun\[cluster\]'"):
        compose("config", ["hydra/launcher=submitit_nope"])


def test_a_user_folder_of_minus_cd_comes_first_and_capsruns_configs_fill_in(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "smoke.yaml").write_text("# @package _global_\nepochs: 3\n")
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 9\n")
    assert compose("config", ["experiment=smoke"], str(tmp_path)).epochs == 3  # the user's smoke.yaml wins
    assert compose("config", ["experiment=mine"], str(tmp_path)).seed == 9
    assert compose("config", ["experiment=smoke", f"hydra.searchpath=[file://{tmp_path}]"]).epochs == 1  # Hydra's order
    jobs = check_train_overrides(["experiment=mine,smoke"], str(tmp_path))
    assert [(job.seed, job.epochs) for job in jobs] == [(9, 10), (0, 3)]


def test_a_swept_experiment_stays_in_the_job_folder_names():
    from capsrun.config.compose import glob_safe, job_folder_overrides

    (override,) = job_folder_overrides(["experiment=smoke,demo", "seed=0,1"])
    assert override == "hydra.job.config.override_dirname.exclude_keys=[resume,hydra.run.dir,hydra.sweep.dir," \
                       "hparams_search]"
    assert job_folder_overrides(["experiment=smoke", "seed=0,1"]) == []  # one experiment: left out of the names
    assert job_folder_overrides(["experiment=smoke,demo", "hydra.sweep.subdir=x"]) == []  # the user's own names
    assert glob_safe("") == "defaults" and glob_safe("model.decoder_units=[16,32]") == "model.decoder_units=(16,32)"
