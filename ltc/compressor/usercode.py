"""The user's code inside a search: a model, its factory or factory file, a dataset, a loss. Whatever
it raises (``sys.exit`` included; Ctrl-C is not its failure) is a bad input: one
:class:`~ltc.errors.LtcError` line that names what failed, never a traceback, and never an exit that
looks like success."""

from __future__ import annotations

import contextlib

from torch import nn

from ltc.errors import InternalError, LtcError, first_line


def describe(exc: BaseException) -> str:
    """``raised ValueError: <its first line>``, or ``called sys.exit(CODE)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})" if exc.code is not None else "called sys.exit()"
    return f"raised {type(exc).__name__}: {first_line(exc)}"


def is_users_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised while the user's code ran, is that code's failure: anything but ltc's own
    errors and an interrupt (Ctrl-C, or SIGTERM, which the CLI turns into one)."""
    return not isinstance(exc, (KeyboardInterrupt, LtcError, InternalError))


@contextlib.contextmanager
def guard(what: str, way: str = "fix it and run again"):
    """Run the user's code: its failure becomes ``LtcError("<what> <raised ...>; <way>")``."""
    try:
        yield
    except BaseException as exc:
        if not is_users_failure(exc):
            raise
        raise LtcError(f"{what} {describe(exc)}; {way}") from None


def check_materialised(model: nn.Module, what: str) -> None:
    """Refuse a model whose parameters or buffers hold no values: uninitialised lazy parameters
    (``nn.LazyLinear`` before its first call) or tensors on the meta device. ltc trains, saves and
    hashes the values, so the user materialises the model first (the message says how)."""
    from torch.nn.parameter import UninitializedTensorMixin

    tensors = [*model.named_parameters(), *model.named_buffers()]
    lazy = [name for name, t in tensors if isinstance(t, UninitializedTensorMixin)]
    if lazy:
        raise LtcError(f"{what}: {_names(lazy)} {'is an' if len(lazy) == 1 else 'are'} uninitialised lazy "
                       "parameter(s) (a Lazy* module never called); materialise the model first: call it once on "
                       "an example input, model(example), before ltc gets it")
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise LtcError(f"{what}: {_names(meta)} {'is' if len(meta) == 1 else 'are'} on the meta device (no values); "
                       "materialise the model first: build it outside torch.device('meta'), or call "
                       "model.to_empty(device='cpu') and initialise its weights, before ltc gets it")


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + ("..." if len(names) > 3 else "")
