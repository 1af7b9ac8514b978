"""User-facing errors: one line that names the problem and the fix."""


class QexpError(Exception):
    """An error caused by the user's input (config, data, files), reported as one line.

    The CLI prints ``error: <message>`` and exits non-zero, without a traceback.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force a single line


class NumericalError(QexpError):
    """NaN/Inf in the loss or the weights."""

    exit_code = 3
