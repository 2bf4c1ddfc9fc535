"""The two exception types users see, one per exit code.

:class:`LtcError` (exit 1): the input is wrong; the message names the problem and the way out.
:class:`InternalError` (exit 2): ltc is wrong (a broken invariant, a verification failure on valid
inputs); the message says what broke and that nothing was written.
"""


class LtcError(Exception):
    """A user-facing error about the input. The CLI prints ``str(error)`` on one line and exits 1."""


class InternalError(Exception):
    """ltc itself failed a check on valid input. The CLI prints one line and exits 2."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
