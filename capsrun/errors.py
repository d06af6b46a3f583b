"""The exceptions capsrun raises for the command line to turn into one line and an exit code.

Library code (config, data, models, training, analysis) raises them and never prints or exits;
the commands map them to the exit codes below.
"""


class CapsrunError(Exception):
    """A problem the user can fix (bad config, missing data, not a run folder, ...): exit code 2.

    The message is a single line naming the problem and, where possible, the fix.
    """


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after a whole step, with a checkpoint: exit code 3.

    run_dir: the run folder; checkpoint: the checkpoint written; step: the global step;
    signal_name: what stopped it (e.g. "SIGTERM", or a stop request from another worker).
    """

    def __init__(self, run_dir: str, checkpoint: str, step: int, signal_name: str):
        self.run_dir, self.checkpoint, self.step, self.signal_name = run_dir, checkpoint, step, signal_name
        super().__init__(f"{signal_name} received: checkpoint {checkpoint} written at step {step}; "
                         f"continue with: capsrun train resume={run_dir}")


class TrainingDiverged(Exception):
    """The loss or the gradients became non-finite: exit code 4. The last good checkpoint is kept.

    run_dir: the run folder; step: the global step of the non-finite value.
    """

    def __init__(self, run_dir: str, step: int):
        self.run_dir, self.step = run_dir, step
        super().__init__(f"loss or gradients became non-finite at step {step}; the last good checkpoint is kept "
                         f"in {run_dir}/checkpoints; lower optimizer.lr or set trainer.max_grad_norm")


EXIT_USAGE = 2
"""Exit status for bad input of any kind (CapsrunError)."""

EXIT_INTERRUPTED = 3
"""Exit status after SIGTERM/SIGINT: a checkpoint was written and the run can be resumed."""

EXIT_DIVERGED = 4
"""Exit status when the loss or the gradients became non-finite."""
