"""The one exception type users see: a one-line message naming what was wrong and how to fix it."""


class SaekitError(Exception):
    """Bad input or an unrecoverable condition; the CLI prints the message on one line and exits 1."""
