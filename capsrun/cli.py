"""`capsrun <command> [key=value ...]`: argv -> command. Nothing imports this module.

Every command checks its config before anything is written; bad input ends with one line on
stderr and exit code 2, never a traceback (capsrun.commands.frontend).
"""
import importlib
import os
import sys
from typing import List, Optional

from capsrun import __version__
from capsrun.commands import COMMANDS
from capsrun.commands.frontend import log_progress_to_stderr, run
from capsrun.errors import EXIT_USAGE
from capsrun.logs import VERBOSE_ENV, quiet_tensorflow, verbose_requested

USAGE = """usage: capsrun <command> [key=value ...]

commands:
  train   train a CapsNet (Hydra overrides, -m for sweeps, resume=RUN_DIR to continue a run)
  launch  run `train` as N local workers of a multi-worker cluster (workers=N -- train ...)
  eval    test accuracy, confusion matrix and misclassified digits of runs (run_dir=PATH, several = ensemble)
  visualize  reconstructions, capsule-dimension perturbations (Figure 4) and capsule lengths (run_dir=PATH)
  predict classify PNG/JPEG/.npy digits with a trained run (run_dir=PATH images=[a.png,b.png])
  export  write a run's model as a TensorFlow SavedModel (run_dir=PATH)
  bench   train/eval speed on this machine vs a plain reference CapsNet and the conv-only bound
  report  table, CSV and plot of a sweep: mean +- std test error per setting over seeds (sweep_dir=PATH)

`capsrun <command> --help` lists a command's settings; `capsrun --version` prints the version;
`capsrun --verbose <command> ...` (or CAPSRUN_VERBOSE=1) also shows TensorFlow's start-up lines.

examples:
  capsrun train epochs=50
  capsrun train -m model.routing_iterations=1,2,3
  capsrun train -m experiment=table1 && capsrun report sweep_dir=outputs/multirun/table1/DATE/TIME
  capsrun train resume=outputs/2026-11-28/10-00-00
"""
def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `capsrun` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:  # anywhere: no command takes an option of that name; children inherit it
        argv = [arg for arg in argv if arg != "--verbose"]
        os.environ[VERBOSE_ENV] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version"):
        print(f"capsrun {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"capsrun: error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)} "
              "(see capsrun --help)", file=sys.stderr)
        return EXIT_USAGE
    quiet_tensorflow(verbose=verbose_requested())
    if command != "train":  # train's logging is Hydra's (console and train.log)
        log_progress_to_stderr()
    module, function = COMMANDS[command]
    return run(command, getattr(importlib.import_module(module), function), rest)


if __name__ == "__main__":
    sys.exit(main())
