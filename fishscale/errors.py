"""The one exception type the CLI turns into a clean message (no traceback)."""


class FishscaleError(Exception):
    """A user-facing error: bad input, bad config, a failed check.

    The message must name the file, row, column or key at fault and the reason.
    The CLI prints it as ``error: <message>`` and exits with status 2.
    """
