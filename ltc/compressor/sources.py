"""Models from outside ltc's registry: ``torchvision:NAME`` and ``timm:NAME`` (random init, when the
package is installed: they are optional, not ltc dependencies) and ``path/to/file.py:function``, a
factory of the user's own (importing it runs that file: the user names it on the command line; ltc
never imports a file named inside a ticket).

Every builder takes ``(in_shape, classes, dropout)`` like the registry's; a factory is called with the
keyword arguments its signature accepts among ``in_shape``, ``classes``, ``num_classes``,
``in_channels`` and ``dropout``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ltc.compressor.usercode import describe, guard, is_users_failure
from ltc.errors import LtcError, first_line


def kind(name: str) -> str:
    """registry, torchvision, timm, custom or file."""
    head, sep, _ = name.partition(":")
    if sep and head in ("torchvision", "timm", "custom"):
        return head
    path, sep, _ = name.rpartition(":")
    return "file" if sep and path.endswith(".py") else "registry"


def call_builder(fn: Callable, what: str, **offered) -> nn.Module:
    """``fn`` called with the ``offered`` keyword arguments its signature takes; whatever it raises, or
    a result that is not a module, is a one-line error naming ``what``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if v is not None and (takes_all or k in params)}
    with guard(f"{what}: building the model", "fix the model's code"):  # sys.exit included
        model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise LtcError(f"{what}: returned a {type(model).__name__}, not a torch nn.Module")
    return model


def _torchvision(name: str, in_shape, classes: int, dropout: float) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise LtcError(f"torchvision:{name}: torchvision is not installed; pip install torchvision (a build that "
                       "matches your torch)") from None
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails as it registers ops
        raise LtcError(f"torchvision:{name}: torchvision cannot be imported ({type(exc).__name__}: {first_line(exc)}); "
                       "install the torchvision build that matches your torch") from None
    if name not in torchvision.models.list_models():
        raise LtcError(f"torchvision:{name}: no such torchvision model; see torchvision.models.list_models()")
    return call_builder(lambda **kw: torchvision.models.get_model(name, weights=None, **kw), f"torchvision:{name}",
                 num_classes=classes)


def _timm(name: str, in_shape, classes: int, dropout: float) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise LtcError(f"timm:{name}: timm is not installed; pip install timm") from None
    except Exception as exc:  # noqa: BLE001 - timm imports torchvision, which may not match torch
        raise LtcError(f"timm:{name}: timm cannot be imported ({type(exc).__name__}: {first_line(exc)}); install "
                       "torchvision and timm builds that match your torch") from None
    if not timm.is_model(name):
        raise LtcError(f"timm:{name}: no such timm model; see timm.list_models()")
    return call_builder(lambda **kw: timm.create_model(name, pretrained=False, **kw), f"timm:{name}",
                 num_classes=classes, in_chans=in_shape[0])


def load_factory(spec: str) -> Callable:
    """``path/to/file.py:function`` -> the function (the file is imported: its code runs)."""
    path_text, _, fn_name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise LtcError(f"--model {spec}: {path} {'is not a file' if path.exists() else 'not found'}; give "
                       "path/to/file.py:function")
    mod_name = f"ltc_user_model_{abs(hash(str(path.resolve())))}"
    if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun rank
        print(f"ltc: importing and running {path} (a factory file runs with your permissions)", file=sys.stderr)
    try:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
        module_spec.loader.exec_module(module)
    except BaseException as exc:  # importing the user's file may raise anything, or call sys.exit
        sys.modules.pop(mod_name, None)
        if not is_users_failure(exc):
            raise
        raise LtcError(f"--model {spec}: importing {path} {describe(exc)}; fix the file") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise LtcError(f"--model {spec}: {path} has no function {fn_name!r}")
    return fn


def file_hash(spec: str) -> str:
    """The factory file's content hash and the function's name: a run folder is resumed only with the
    same code."""
    import hashlib

    path_text, _, fn_name = spec.rpartition(":")
    try:
        data = Path(path_text).read_bytes()
    except OSError as exc:
        raise LtcError(f"--model {spec}: cannot read {path_text} ({exc.strerror or exc})") from None
    return hashlib.sha256(data + b"\0" + fn_name.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=32)  # a factory file is imported once per process
def builder(name: str) -> Callable[[tuple, int, float], nn.Module]:
    """``(in_shape, classes, dropout) -> fresh model`` for a model name of any kind but registry/custom."""
    k = kind(name)
    rest = name.partition(":")[2]
    if k == "torchvision":
        return lambda in_shape, classes, dropout: _torchvision(rest, in_shape, classes, dropout)
    if k == "timm":
        return lambda in_shape, classes, dropout: _timm(rest, in_shape, classes, dropout)
    if k == "file":
        fn = load_factory(name)
        return lambda in_shape, classes, dropout: call_builder(
            fn, f"--model {name}", in_shape=tuple(in_shape), classes=classes, num_classes=classes,
            in_channels=in_shape[0], dropout=dropout)
    if k == "custom":
        raise LtcError(f"model {name!r} was searched with ltc.search on your own nn.Module: rebuild it from your code "
                       "and export with ltc.export(model, ticket, example_input, path)")
    raise LtcError(f"model {name!r} is not a torchvision:, timm: or file.py: model")
