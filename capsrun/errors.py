"""The one exception type that the command line turns into a one-line message and exit code 2."""


class CapsrunError(Exception):
    """A problem the user can fix (bad config, missing data, not a run folder, ...).

    The message is a single line naming the problem and, where possible, the fix.
    """


EXIT_USAGE = 2
"""Exit status for bad input of any kind."""

EXIT_INTERRUPTED = 3
"""Exit status after SIGTERM/SIGINT: a checkpoint was written and the run can be resumed."""

EXIT_DIVERGED = 4
"""Exit status when the loss or the gradients became non-finite."""
