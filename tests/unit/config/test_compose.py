"""Hydra composition: a config-group option that does not exist lists the group's options and
the closest one; a missing Hydra plugin names the extra that installs it."""
import pytest

from capsrun.config.compose import check_train_overrides, compose
from capsrun.errors import CapsrunError


@pytest.mark.parametrize("override,options,closest", [
    ("experiment=smok", "affine_robustness, cifar10, demo, efficient_capsnet, fashion_mnist, multimnist, smoke, table1",
     "experiment=smoke"),
    ("data=mnsit", "affnist, cifar10, fashion_mnist, folder, mnist, multimnist, npz", "data=mnist"),
    ("model=capsnett", "baseline_cnn, capsnet, efficient_capsnet", "model=capsnet"),
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
