"""Errors a user can fix. The CLI prints them as one line and exits 2, without a traceback."""


class UserError(Exception):
    """Bad input, bad configuration or a wrong file: the message says what and how to fix it."""


class TrainingStopped(Exception):
    """Training could not continue (non-finite loss, collapse); the last good state was kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM during training; a resumable bundle was written. The CLI exits 130."""


class TrainingFinished(Exception):
    """Raised by a hook to end training early as a success (e.g. a convergence rule); the epoch is completed."""
