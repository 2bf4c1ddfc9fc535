"""The one exception type users see: a one-line message that names the problem and the way out."""


class LtcError(Exception):
    """A user-facing error. The CLI prints ``str(error)`` on one line and exits non-zero."""
