"""A stand-in for Triton where it cannot be installed (macOS, native Windows): Triton ships for Linux only.

``import course`` installs it, only when ``import triton`` would fail, as the modules ``triton``,
``triton.language`` and ``triton.testing``. Then every line that merely *defines* Triton code still
runs: ``import triton``, ``@triton.jit`` (and ``@triton.autotune``, ``@triton.heuristics``,
``triton.Config``), ``tl.constexpr`` annotations, and the pure-Python helpers ``triton.cdiv`` and
``triton.next_power_of_2``. So the PyTorch parts of notebooks 00, 02, 03 and 04 and their check modules
work, and a cell fails only when it *runs* a kernel (``kernel[grid](...)``), with
:class:`TritonUnavailable` saying where Triton cells run (:func:`course.runtime.platform_support`). A
check that launches a kernel reports that message as its red failure line.

The stand-in is no package (``import triton.compiler`` and the like still raise ImportError), and
torch's cached "is Triton installed?" answer is taken before it is installed, so torch keeps behaving
as on a machine without Triton. :func:`course.runtime.triton_available` tells the stand-in apart.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import types

from . import runtime
from .checks.core import RED, BOLD, RESET, CheckFailed

#: What ``triton.__version__`` says here (it is no version number on purpose).
VERSION = "absent (stand-in: Triton is not installed here)"


class TritonUnavailable(CheckFailed, RuntimeError):
    """Raised when a Triton kernel is launched (or compiled, benchmarked) on a machine without Triton.

    A :class:`~course.checks.core.CheckFailed`, so a check that launches the learner's kernel prints
    this message as its verdict instead of a traceback; also a RuntimeError for code that catches those.
    """

    def _render_traceback_(self) -> list[str]:  # IPython/Jupyter shows this instead of a traceback
        return [f"{RED}{BOLD}{type(self).__name__}{RESET}: {self}"]


def message(what: str = "this Triton kernel") -> str:
    """Why ``what`` cannot run here and where it does, with :func:`runtime.platform_support`'s sentence.

    Off Linux: ``needs Linux: ...`` (Triton ships for Linux only); on Linux: ``needs Triton: ...``.
    """
    import platform

    need = "Triton" if platform.system() == "Linux" else "Linux"
    return f"needs {need}: {what} cannot run without Triton. {runtime.platform_support()}"


def _unavailable(what: str) -> TritonUnavailable:
    return TritonUnavailable(message(what))


class _Missing:
    """Any other ``tl.*`` or ``triton.*`` name: exists (annotations and defaults evaluate), never runs."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise _unavailable(self._name)

    def __getitem__(self, item):
        return _Missing(f"{self._name}[...]")

    def __repr__(self) -> str:
        return f"<{self._name}: Triton is not installed here>"


class JITFunction:
    """What ``@triton.jit`` returns here: keeps the Python function, refuses to launch or compile it."""

    def __init__(self, fn, kind: str = "triton.jit"):
        self.fn = fn
        self._kind = kind
        functools.update_wrapper(self, fn)

    @property
    def _label(self) -> str:
        return f"the Triton kernel {getattr(self.fn, '__name__', '?')}"

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise _unavailable(self._label)

        return launch

    def __call__(self, *args, **kwargs):
        raise _unavailable(self._label)

    def run(self, *args, **kwargs):
        raise _unavailable(self._label)

    def warmup(self, *args, **kwargs):
        raise _unavailable(self._label)

    def __repr__(self) -> str:
        return f"<{self._kind} {getattr(self.fn, '__name__', '?')} (stand-in: Triton is not installed here)>"


class Autotuner(JITFunction):
    """What ``@triton.autotune(...)`` or ``@triton.heuristics(...)`` returns here."""

    def __init__(self, fn, configs=None, key=None, **kwargs):
        super().__init__(fn, kind="triton.autotune")
        self.configs = list(configs or [])
        self.key = key

    @property
    def _label(self) -> str:
        inner = self.fn
        while isinstance(inner, JITFunction):
            inner = inner.fn
        return f"the Triton kernel {getattr(inner, '__name__', '?')}"


class Config:
    """``triton.Config``: only records its arguments (defining configs runs; using them needs Triton)."""

    def __init__(self, kwargs, num_warps=4, num_stages=3, num_ctas=1, maxnreg=None, pre_hook=None, **extra):
        self.kwargs = dict(kwargs)
        self.num_warps, self.num_stages = num_warps, num_stages
        self.num_ctas, self.maxnreg = num_ctas, maxnreg
        self.pre_hook = pre_hook
        self.extra = extra

    def all_kwargs(self) -> dict:
        return {**self.kwargs, "num_warps": self.num_warps, "num_stages": self.num_stages}

    def __repr__(self) -> str:
        return f"Config({self.kwargs}, num_warps={self.num_warps}, num_stages={self.num_stages})"


def jit(fn=None, **kwargs):
    """``@triton.jit`` and ``@triton.jit(...)``."""
    if fn is None:
        return lambda f: JITFunction(f)
    return JITFunction(fn)


def autotune(configs, key, **kwargs):
    """``@triton.autotune(configs, key, ...)``."""
    return lambda fn: Autotuner(fn, configs, key)


def heuristics(values):
    """``@triton.heuristics({...})``."""
    return lambda fn: Autotuner(fn)


def cdiv(x: int, y: int) -> int:
    """Ceiling division, as ``triton.cdiv``."""
    return (x + y - 1) // y


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, as ``triton.next_power_of_2``."""
    n -= 1
    n |= n >> 1
    n |= n >> 2
    n |= n >> 4
    n |= n >> 8
    n |= n >> 16
    n |= n >> 32
    return n + 1


def _module(name: str, doc: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=__file__)
    module.__file__ = __file__
    module.__course_stand_in__ = True
    module.__dict__.update(attrs)

    def __getattr__(attr: str):  # every other name exists and refuses to run
        if attr.startswith("__"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        return _Missing(f"{name}.{attr}")

    module.__getattr__ = __getattr__
    return module


def build() -> types.ModuleType:
    """The stand-in ``triton`` module, with ``.language`` and ``.testing`` attached."""
    language = _module("triton.language", "Stand-in for triton.language: every name exists, none runs.",
                       constexpr=_Missing("triton.language.constexpr"))
    testing = _module("triton.testing", "Stand-in for triton.testing: nothing here runs.")
    return _module("triton", __doc__, __version__=VERSION, jit=jit, autotune=autotune, heuristics=heuristics,
                   Config=Config, JITFunction=JITFunction, Autotuner=Autotuner, cdiv=cdiv,
                   next_power_of_2=next_power_of_2, TritonUnavailable=TritonUnavailable, language=language,
                   testing=testing)


def install() -> bool:
    """Put the stand-in into ``sys.modules`` unless a Triton (real or stand-in) imports; True if it did."""
    if is_installed():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    _settle_torch()
    if not any(isinstance(finder, _HideFromTorch) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HideFromTorch())
    triton = build()
    for name, module in (("triton", triton), ("triton.language", triton.language),
                         ("triton.testing", triton.testing)):
        sys.modules[name] = module
    return True


def is_installed() -> bool:
    """True when ``triton`` in this process is the stand-in."""
    return getattr(sys.modules.get("triton"), "__course_stand_in__", False) is True


def _settle_torch() -> None:
    """Let torch find out *now*, before the stand-in exists, that Triton is missing (it caches the answer)."""
    try:
        from torch.utils import _triton

        _triton.has_triton_package()
        _triton.get_triton_version()
        _triton.get_triton_version((0, 0))  # the call torch._dynamo makes (the cache keys on arguments)
    except Exception:  # another torch: nothing cached to settle
        pass


class _HidingLoader(importlib.machinery.SourceFileLoader):
    """Runs a torch module's top level with ``triton`` absent, as on a machine that never had it."""

    def exec_module(self, module) -> None:
        saved = sys.modules.get("triton", _NOTHING)
        sys.modules["triton"] = None  # `import triton` raises ImportError while this module runs
        try:
            super().exec_module(module)
        finally:
            if saved is _NOTHING:
                sys.modules.pop("triton", None)
            else:
                sys.modules["triton"] = saved


_NOTHING = object()


class _HideFromTorch(importlib.abc.MetaPathFinder):
    """Keeps the stand-in from torch modules imported later, whose top level probes for Triton.

    For example ``torch._inductor.runtime.triton_compat`` (imported by ``torch.compile``) runs
    ``try: import triton`` and, when that succeeds, imports ``triton.compiler``: with the stand-in
    that would break ``torch.compile`` on a Mac. Torch modules imported from now on run their top
    level with ``triton`` absent instead (the stand-in is back as soon as each one has run).
    """

    def find_spec(self, name, path=None, target=None):
        if not name.startswith("torch.") or "triton" not in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return None  # not a plain .py file: let the usual finders handle it
        spec.loader = _HidingLoader(spec.loader.name, spec.loader.path)
        return spec
