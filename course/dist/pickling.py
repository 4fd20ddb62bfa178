"""Sending values to the ranks: pickle, except that functions and classes defined in a notebook
(which no rank could import by name) travel by value: compiled code, defaults, closure, and the
globals they read. See the package docstring of :mod:`course.dist` for the rules.
"""

from __future__ import annotations

import builtins
import dis
import importlib
import io
import linecache
import marshal
import pickle
import sys
import types
from typing import Any

import torch

_GLOBAL_OPS = {"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME", "STORE_NAME", "DELETE_NAME"}
_SKIP_CLASS_ATTRS = {"__dict__", "__weakref__"}
# Namespaces on a rank for code that came by value, one per module it came from, so that two
# notebook functions that call each other find each other, as they did in the notebook.
_NAMESPACES: dict[str, dict] = {}


def _importable(obj: Any) -> bool:
    """True when pickle can send ``obj`` by name: its module imports and holds it at its qualname."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or not qualname or module_name in ("__main__", "__mp_main__") or "<locals>" in qualname:
        return False
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - not importable, so send by value
            return False
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return False
    return found is obj


def _defined_here(cls: type) -> bool:
    """A class made in the notebook or inside a function (one no other process could import)."""
    module_name = getattr(cls, "__module__", None)
    return module_name in (None, "__main__", "__mp_main__") or "<locals>" in getattr(cls, "__qualname__", "")


def _global_names(code: types.CodeType) -> set[str]:
    """Names ``code`` (and the functions, lambdas and comprehensions inside it) reads as globals."""
    names = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_OPS and isinstance(instruction.argval, str):
            names.add(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _source_lines(code: types.CodeType) -> list[str]:
    """The cell's source lines, so that a traceback on a rank shows the learner's code."""
    return list(linecache.getlines(code.co_filename))


def _make_function(code_bytes: bytes, name: str, qualname: str, module: str, n_free: int, filename: str,
                   lines: list[str]) -> types.FunctionType:
    code = marshal.loads(code_bytes)
    if lines and filename not in linecache.cache:
        linecache.cache[filename] = (sum(len(x) for x in lines), None, lines, filename)
    namespace = _NAMESPACES.setdefault(module, {"__name__": module, "__builtins__": builtins})
    closure = tuple(types.CellType() for _ in range(n_free)) if n_free else None
    fn = types.FunctionType(code, namespace, name, None, closure)
    fn.__qualname__ = qualname
    fn.__module__ = module
    return fn


def _set_function_state(fn: types.FunctionType, state: tuple) -> types.FunctionType:
    shipped_globals, defaults, kwdefaults, closure_values, attributes, doc = state
    fn.__globals__.update(shipped_globals)
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    fn.__doc__ = doc
    fn.__dict__.update(attributes)
    for cell, (has_value, value) in zip(fn.__closure__ or (), closure_values):
        if has_value:
            cell.cell_contents = value
    return fn


def _make_class(metaclass: type, name: str, bases: tuple, module: str, qualname: str) -> type:
    cls = metaclass(name, bases, {"__module__": module, "__qualname__": qualname})
    _NAMESPACES.setdefault(module, {"__name__": module, "__builtins__": builtins})[name] = cls
    return cls


def _set_class_state(cls: type, attributes: dict) -> type:
    for key, value in attributes.items():
        setattr(cls, key, value)
    return cls


class _Pickler(pickle.Pickler):
    """pickle, except that functions and classes no rank could import travel by value."""

    def reducer_override(self, obj: Any):  # noqa: C901 - one branch per kind of object
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        if isinstance(obj, types.FunctionType) and not _importable(obj):
            return self._reduce_function(obj)
        if isinstance(obj, type) and _defined_here(obj) and not _importable(obj):
            return self._reduce_class(obj)
        if isinstance(obj, staticmethod):
            return staticmethod, (obj.__func__,)
        if isinstance(obj, classmethod):
            return classmethod, (obj.__func__,)
        if isinstance(obj, property):
            return property, (obj.fget, obj.fset, obj.fdel, obj.__doc__)
        return NotImplemented

    def _reduce_function(self, fn: types.FunctionType):
        code = fn.__code__
        shipped = {}
        for name in sorted(_global_names(code)):
            if name in fn.__globals__ and name != fn.__name__:
                shipped[name] = _shippable(fn.__globals__[name], f"{fn.__name__} reads the global {name!r}")
        closure = []
        for var, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                closure.append((True, _shippable(cell.cell_contents, f"{fn.__name__} closes over {var!r}")))
            except ValueError:  # an empty cell (a variable assigned after the function was made)
                closure.append((False, None))
        if fn.__name__ in fn.__globals__ and fn.__globals__[fn.__name__] is fn:
            shipped[fn.__name__] = fn  # a recursive function calls itself by its global name
        state = (shipped, fn.__defaults__, fn.__kwdefaults__, tuple(closure), dict(fn.__dict__), fn.__doc__)
        args = (marshal.dumps(code), fn.__name__, fn.__qualname__, fn.__module__ or "__main__",
                len(code.co_freevars), code.co_filename, _source_lines(code))
        return _make_function, args, state, None, None, _set_function_state

    def _reduce_class(self, cls: type):
        attributes = {k: v for k, v in vars(cls).items() if k not in _SKIP_CLASS_ATTRS
                      and k not in ("__module__", "__qualname__")
                      # classes a metaclass made (autograd.Function's _backward_cls): it makes them again
                      and not (isinstance(v, type) and not _defined_here(v) and not _importable(v))}
        for key, value in attributes.items():
            _shippable(value, f"class {cls.__name__} has the attribute {key!r}")
        args = (type(cls), cls.__name__, cls.__bases__, cls.__module__ or "__main__", cls.__qualname__)
        return _make_class, args, attributes, None, None, _set_class_state


def _shippable(value: Any, what: str) -> Any:
    """``value`` itself; raises a TypeError naming it when it can never be pickled."""
    if isinstance(value, (types.FunctionType, type, types.ModuleType, staticmethod, classmethod, property,
                          int, float, str, bool, type(None), torch.Tensor)):
        return value
    try:
        _Pickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except RecursionError:
        return value
    except Exception as error:  # noqa: BLE001 - say which global could not be sent
        raise TypeError(f"{what}, a {type(value).__name__}, which cannot be sent to the ranks ({error}); "
                        "pass it as an argument or create it inside the function") from None
    return value


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for a rank: notebook functions and classes by value, the rest as pickle does."""
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except (pickle.PicklingError, AttributeError) as error:
        raise TypeError(f"cannot send {type(obj).__name__} to the ranks: {error}") from None
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """The inverse of :func:`dumps` (on a rank, or in a test)."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes from dumps(), got {type(data).__name__}")
    return pickle.loads(data)
