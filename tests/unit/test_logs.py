"""TensorFlow's start-up lines: recognised and dropped from what an import prints on fd 2, the
rest passed on; CAPSRUN_VERBOSE keeps everything."""
import os
import subprocess
import sys

import pytest

from capsrun.logs import strip_banner, verbose_requested

BANNER_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796161490.310100    7094 port.cc:153] oneDNN custom operations are on. You may see ...\n"
    "I0000 00:00:1796161490.310665    7094 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
    "E0000 00:00:1796161490.3 7094 cuda_blas.cc:1407] Unable to register cuBLAS factory: Attempting to ...\n"
    "W0000 00:00:1796161490.3 7094 computation_placer.cc:177] computation placer already registered.\n"
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow\n"
)


def test_the_start_up_lines_are_dropped_and_other_lines_kept():
    assert strip_banner(BANNER_LINES) == ""
    assert strip_banner(BANNER_LINES + "a real problem\n") == "a real problem\n"


@pytest.mark.parametrize("value,verbose", [("1", True), ("yes", True), ("", False), ("0", False), ("false", False)])
def test_capsrun_verbose(value, verbose):
    assert verbose_requested({"CAPSRUN_VERBOSE": value}) is verbose


def test_an_import_under_the_finder_prints_only_what_is_not_a_banner(tmp_path):
    """A stand-in package named tensorflow whose import writes a banner and one other line to fd 2,
    as TensorFlow's C++ libraries do (not through sys.stderr)."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\n"
        f"os.write(2, {BANNER_LINES.encode()!r})\n"
        "os.write(2, b'kept line\\n')\n")
    probe = "from capsrun.logs import quiet_tensorflow; quiet_tensorflow(); import tensorflow; print('imported')"
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "CAPSRUN_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    quiet = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert quiet.stdout == "imported\n" and quiet.stderr == "kept line\n"
    loud = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**env, "CAPSRUN_VERBOSE": "1"})
    assert loud.stderr == BANNER_LINES + "kept line\n"
