"""`capsrun bench` end to end through the real command line (nothing here is timed)."""
import json

import pytest
import tensorflow as tf

from capsrun.models.capsnet import CapsNet
from capsrun.models.cost import count_macs
from tests.conftest import last_stderr_line, run_cli
from tests.helpers import write_smallnorb

BENCH_KEYS = {"capsrun_train", "capsrun_eval", "reference_train", "reference_eval", "conv_only",
              "digit_caps_capsrun", "digit_caps_reference"}


TINY_BENCH = ["model.conv1_filters=8", "model.primary_maps=2", "model.decoder_units=[16]",
              "batch_sizes=[4,8]", "warmup_steps=1", "timed_steps=2", "pipeline_batches=3",
              "routings=[dynamic,self_attention]", "routing_batch_size=4",
              "loop_models=[efficient_capsnet]", "loop_batch_sizes=[4]", "steps_per_loop=[1,2]", "loop_rounds=1"]
"""Two routings only: each adds three traced steps (the layer, its plain form, a train step);
tests/unit/models/test_reference.py checks every routing's layer against its plain form."""


def test_bench_command_prints_the_table_and_writes_bench_json(tmp_path):
    result = run_cli("bench", *TINY_BENCH, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("capsrun train", "reference train", "conv-only bound", "input pipeline",
                  "capsrun train vs reference", "capsrun train / conv-only bound"):
        assert label in result.stdout, label
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["command"].startswith("capsrun bench")
    assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["tensorflow"] == tf.__version__
    assert report["config"]["batch_sizes"] == [4, 8] and report["config"]["timed_steps"] == 2
    assert [r["batch_size"] for r in report["results"]] == [4, 8]
    for results in report["results"]:
        assert BENCH_KEYS | {"pipeline", "ratios", "batch_size", "other_processes_cpu_share"} == set(results)
        assert 0 <= results["other_processes_cpu_share"] <= 1
        for key in BENCH_KEYS:
            entry = results[key]
            assert len(entry["ms_per_step_all"]) == 2 and entry["ms_per_step"] > 0
            assert entry["images_per_second"] == pytest.approx(results["batch_size"] * 1000 / entry["ms_per_step"])
            assert entry["peak_rss_mib"] > 0 and entry["first_step_ms"] > 0
        assert results["pipeline"]["images_per_second"] > 0 and results["pipeline"]["batches"] == 3
        ratios = results["ratios"]
        assert ratios["train_vs_reference"] == pytest.approx(
            results["capsrun_train"]["images_per_second"] / results["reference_train"]["images_per_second"])
        assert {"eval_vs_reference", "train_of_conv_bound", "pipeline_vs_train"} <= set(ratios)
    tiny = CapsNet(conv1_filters=8, primary_maps=2, decoder_units=(16,))
    tiny.build_for_inputs()
    assert report["parameters"] == tiny.count_params()
    assert report["macs_per_image"] == count_macs(tiny)

    routings = report["routings"]
    assert routings["batch_size"] == 4 and list(routings["rows"]) == ["dynamic", "self_attention"]
    for name, row in routings["rows"].items():
        for part in ("layer", "plain", "train"):
            assert len(row[part]["ms_per_step_all"]) == 2 and row[part]["ms_per_step"] > 0, (name, part)
        assert row["layer_vs_plain"] == pytest.approx(row["plain"]["ms_per_step"] / row["layer"]["ms_per_step"])
        assert row["layer_vs_dynamic"] == pytest.approx(
            row["layer"]["ms_per_step"] / routings["rows"]["dynamic"]["layer"]["ms_per_step"])
        prior = 10 * 72 if name == "self_attention" else 0  # its prior [J, I], I = 6 * 6 * 2 primary capsules
        assert row["parameters"] == tiny.count_params() + prior
        assert row["macs_per_image"] > 0
    table = result.stdout.split("routings at batch 4", 1)[1].splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["dynamic", "self_attention"]
    assert f"{routings['rows']['self_attention']['layer_vs_plain']:.2f}x" in table[3]

    (loop,) = report["loops"]  # capsrun's Trainer with steps_per_loop 1 and 2
    assert loop["model"] == "efficient_capsnet" and loop["batch_size"] == 4 and set(loop["rows"]) == {"1", "2"}
    for row in loop["rows"].values():
        assert row["images_per_second"] == pytest.approx(4 * 1000 / row["ms_per_step"])
    assert loop["loop_vs_single"] == pytest.approx(loop["rows"]["2"]["images_per_second"]
                                                   / loop["rows"]["1"]["images_per_second"])
    assert "steps_per_loop" in result.stdout and f"{loop['loop_vs_single']:.2f}x" in result.stdout


def test_bench_measures_efficient_capsnet_without_the_capsnet_only_rows(tmp_path):
    result = run_cli("bench", "model=efficient_capsnet", "batch_sizes=[4]", "warmup_steps=1", "timed_steps=2",
                     "pipeline_batches=2", "include_eval=false", "routings=[self_attention]", "routing_batch_size=4",
                     "loop_models=null", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (results,) = report["results"]
    assert {"capsrun_train", "digit_caps_capsrun"} <= set(results)
    assert not {"reference_train", "conv_only", "digit_caps_reference"} & set(results)
    # 1,573,168 trainable (the paper's 161,824 and the decoder) + 576 batch-norm moving statistics
    assert report["parameters"] == 1_573_744
    assert "Efficient-CapsNet with 1,573,744 parameters" in result.stdout
    assert report["routings"]["rows"]["self_attention"]["train"]["ms_per_step"] > 0


def test_bench_measures_the_em_capsnet_and_its_capsule_layers_against_the_plain_reference(tmp_path):
    """A small EM CapsNet on smallNORB files in the exact format: capsrun's and the plain
    reference's train steps and capsule layers, the reference only up to
    reference_max_batch_size, no CapsNet-only, routing or loop rows."""
    write_smallnorb(tmp_path / "norb", 40)
    result = run_cli("bench", "model=em_capsnet", "data=smallnorb", f"data.path={tmp_path / 'norb'}",
                     "data.val_size=4", "data.image_size=[24,24]", "data.crop_size=20",
                     "model.em_a=4", "model.em_b=3", "model.em_c=3", "model.em_d=2",
                     "model.em_routing_chunk=2", "batch_sizes=[3,5]", "reference_max_batch_size=3", "warmup_steps=1",
                     "timed_steps=2", "pipeline_batches=2", "include_eval=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    small, large = report["results"]
    layers = {"capsrun_train", "capsule_layers_capsrun"}
    assert layers | {"reference_train", "capsule_layers_reference"} <= set(small)
    assert layers <= set(large) and not {"reference_train", "capsule_layers_reference"} & set(large)
    assert not {"conv_only", "digit_caps_capsrun"} & (set(small) | set(large))
    for key in ("reference_train", "capsule_layers_reference", *layers):
        assert small[key]["ms_per_step"] > 0 and small[key]["peak_rss_mib"] > 0, key
    assert small["ratios"]["capsule_layers_vs_reference"] == pytest.approx(
        small["capsule_layers_capsrun"]["images_per_second"] / small["capsule_layers_reference"]["images_per_second"])
    assert "routings" not in report and "loops" not in report
    assert "EM CapsNet with" in result.stdout and "capsule layers capsrun vs ref." in result.stdout


def test_bench_command_checks_its_config_before_measuring(tmp_path):
    for args, message in [
        (["timed_steps=0"], "timed_steps must be >= 1"),
        (["batch_sizes=[]"], "batch_sizes must be a non-empty list"),
        (["model=baseline_cnn"], "capsrun bench measures capsule networks; model.name must be one of capsnet"),
        (["timed_step=3"], "timed_step"),
        (["routings=[dynamic,maxmin]"], "routings: unknown routing 'maxmin'; did you mean 'max_min'?"),
        (["routing_batch_size=0"], "routing_batch_size must be >= 1"),
        (["reference_max_batch_size=0"], "reference_max_batch_size must be null or >= 1"),
        (["output=/proc/nope/bench.json"], "cannot write /proc/nope/bench.json"),
    ]:
        result = run_cli("bench", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in last_stderr_line(result), (args, last_stderr_line(result))
    assert not (tmp_path / "bench.json").exists()
