"""trainer.profile_steps: its forms, its config check, and a trace of exactly the chosen steps."""
import pytest
import tensorflow as tf

from capsrun.config.validation import validate
from capsrun.errors import CapsrunError
from capsrun.training.profiling import StepProfiler, profile_range
from tests.conftest import compose_config


@pytest.mark.parametrize("setting,expected", [(None, None), ([3, 5], (3, 5)), ([1, 1], (1, 1)), (4, (2, 5))])
def test_profile_steps_forms(setting, expected):
    assert profile_range(setting) == expected
    validate(compose_config(f"trainer.profile_steps={'null' if setting is None else setting}"))


@pytest.mark.parametrize("setting", ["0", "[5,3]", "[0,2]", "[1,2,3]", "true", "[1.5,3]", "abc"])
def test_a_bad_profile_steps_is_one_line(setting):
    with pytest.raises(CapsrunError, match=r"^trainer.profile_steps must be null, a number of steps"):
        validate(compose_config(f"trainer.profile_steps={setting}"))


def test_the_profiler_traces_the_chosen_steps_and_a_left_trace_is_stopped(tmp_path):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    step = tf.function(lambda x: tf.reduce_sum(tf.square(x)))
    with StepProfiler([2, 3], tmp_path) as profiler:
        for number in range(1, 6):
            profiler.before(number)
            step(tf.ones([8, 8])).numpy()
            profiler.after(number)
            assert profiler.running == (number == 2)
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1
    space = xplane_pb2.XSpace.FromString(traces[0].read_bytes())
    steps = []
    for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        stats = {key: value.name for key, value in plane.stat_metadata.items()}
        steps += [stat.int64_value or stat.uint64_value for line in plane.lines for event in line.events
                  if names.get(event.metadata_id) == "train"
                  for stat in event.stats if stats.get(stat.metadata_id) == "step_num"]
    assert sorted(steps) == [2, 3]
    with StepProfiler([2, 9], tmp_path / "left") as profiler:  # training ends before step 9
        profiler.before(2)
        profiler.after(2)
        assert profiler.running
    assert not profiler.running and list((tmp_path / "left" / "plugins" / "profile").glob("*/*.xplane.pb"))
    tf.profiler.experimental.start(str(tmp_path / "again"))  # no profiler left running
    tf.profiler.experimental.stop()
