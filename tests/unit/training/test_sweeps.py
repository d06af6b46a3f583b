"""The HParams columns of a sweep: swept keys first, then the main hyper-parameters, as
TensorBoard's HParams plugin serves them; the swept keys handed from the sweep to its jobs."""
from hydra.types import RunMode
from omegaconf import OmegaConf
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

from capsrun.training.summaries import hparams_of
from capsrun.training.sweeps import MAIN_HPARAMS, HParamsSweepCallback, experiment_config_pb, job_hparams
from tests.conftest import compose_config


def served_columns(hparams, swept):
    """The hyper-parameter columns in the order TensorBoard's HParams plugin returns them (it
    sorts the experiment config's columns; its table then shows the first five)."""
    summary = experiment_config_pb(hparams, swept)
    experiment = metadata.parse_experiment_plugin_data(summary.value[0].metadata.plugin_data.content)
    _sort_and_reduce_to_hparams_limit(experiment, 1000)
    return [info.name for info in experiment.hparam_infos]


def test_swept_keys_come_first_then_the_main_hyper_parameters():
    hparams = {**hparams_of(compose_config()), "experiment": "smoke"}
    columns = served_columns(hparams, ["seed", "trainer.log_every_steps"])
    assert columns[:2] == ["seed", "trainer.log_every_steps"]  # swept (a key that is no main one too)
    assert columns[2:] == sorted(key for key in MAIN_HPARAMS if key != "seed")
    assert served_columns(hparams, ["experiment"])[0] == "experiment"
    assert served_columns(hparams, []) == sorted(MAIN_HPARAMS)  # a single run: the main ones, not all 59 keys


def test_jobs_read_the_swept_keys_that_the_sweep_wrote(tmp_path):
    config = OmegaConf.create({"hydra": {"overrides": {"task": ["experiment=smoke", "seed=0,1", "lr=0.1"]},
                                         "sweep": {"dir": str(tmp_path)},
                                         "sweeper": {"params": {"loss.recon_weight": "0,1"}}}})
    HParamsSweepCallback().on_multirun_start(config)
    job = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)},
                            "runtime": {"choices": {"experiment": "smoke", "hparams_search": None}}})
    assert job_hparams(job) == (["seed", "loss.recon_weight"], {"experiment": "smoke"})
    job.mode = RunMode.RUN
    assert job_hparams(job) == ([], {"experiment": "smoke"})


def metric_tags(hparams):
    summary = experiment_config_pb(hparams, [])
    experiment = metadata.parse_experiment_plugin_data(summary.value[0].metadata.plugin_data.content)
    return [info.name.tag for info in experiment.metric_infos]


def test_the_time_to_target_column_is_listed_only_for_runs_with_a_target():
    """A run without `trainer.target_val_accuracy` never writes result/time_to_target_seconds, so
    its HParams table must not list that column (every listed column is filled)."""
    without = hparams_of(compose_config())
    with_target = hparams_of(compose_config("trainer.target_val_accuracy=0.9"))
    assert "result/time_to_target_seconds" not in metric_tags(without)
    assert metric_tags(with_target) == [*metric_tags(without), "result/time_to_target_seconds"]
