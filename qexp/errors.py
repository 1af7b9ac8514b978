"""User-facing errors: one line that names the problem and the fix."""


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` (a message or an exception) on one line, whitespace collapsed, cut at ``limit``."""
    line = " ".join(str(text).split())
    return line if limit is None else line[:limit]


class QexpError(Exception):
    """An error caused by the user's input (config, data, files), reported as one line.

    The CLI prints ``error: <message>`` and exits non-zero, without a traceback.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(one_line(message))  # force a single line


class NumericalError(QexpError):
    """NaN/Inf in the loss or the weights."""

    exit_code = 3


class JobFailed(Exception):
    """One job of a sweep failed with a one-line error.

    Raised instead of exiting inside a Hydra job, so that every launcher (basic, joblib, submitit)
    records the job as failed and goes on; the sweeper reports all failed jobs at the end.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(one_line(message), exit_code)

    def __str__(self) -> str:
        return self.args[0]
