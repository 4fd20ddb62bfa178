"""Run a function on N ranks of ``torch.distributed`` from a notebook, and count what they send.

Three things, used by the ZeRO, Megatron-LM and PaRO notebooks:

**Ranks.** ``ranks = dist.pool(4)`` starts four local processes (``gloo`` on the CPU; ``nccl``
when there is one GPU per rank) that join one process group, and keeps them for the whole
notebook, because starting a process that imports torch costs seconds. ``out = ranks.run(fn, x)``
calls ``fn(x)`` on every rank and returns each rank's return value, printed output and traffic::

    import torch, torch.distributed as tdist
    from course import dist

    def total(x):
        t = torch.tensor([x * (tdist.get_rank() + 1.0)])
        tdist.all_reduce(t)          # ordinary torch.distributed calls
        return t.item()

    out = dist.pool(4).run(total, 1.0)
    out.results      # [10.0, 10.0, 10.0, 10.0]

**Sending your function to the ranks.** The ranks are separate Python processes, so ``fn`` and
its arguments travel there pickled. Ordinary pickle sends a function *by name* ("import
``total`` from module ``__main__``"), which fails for anything defined in a notebook cell: the
rank has no such module. So a function (or class) defined in the notebook travels *by value*:
its compiled code (``marshal``), its default arguments and closure, and the globals it reads:
a module by its name (the rank imports it), another notebook function or class by value again,
anything else (tensors, numbers, configs) pickled. Functions from an importable module
(``torch``, ``course``) still travel by name. Keep to that and everything a notebook defines
runs on the ranks, including a learner's exercise function that a check hands over; a global
that cannot be pickled (an open file, a lock) is refused *before* any rank starts, with its name.

**Failures end the group, never hang.** A rank that raises reports its traceback; if the others
finished too, the group is rebuilt (fast) and the processes reused, and if they are stuck
waiting in a collective for the rank that raised, they are stopped after ``grace`` seconds. A rank
that dies (``os._exit``, a segfault, SIGKILL) or a run past ``timeout`` stops every rank at once.
Either way :class:`RankFailed` is raised with what each rank printed, and the next ``run``
starts fresh processes.

**Traffic.** On every rank the ``torch.distributed`` collectives are wrapped (``all_reduce``,
``reduce_scatter*``, ``all_gather*``, ``broadcast``, ``reduce``, ``send``/``recv``/``isend``/
``irecv``) to count the bytes the rank sends and receives, per process group. Point-to-point
counts are exact. A collective's count is what the rank sends under the bandwidth-optimal ring
algorithm, computed from the real tensors of each call (n ranks, S bytes):

=====================================  ========================  ==========================
operation                              sent per rank             received per rank
=====================================  ========================  ==========================
all_reduce (S = tensor)                2 (n-1)/n S               2 (n-1)/n S
reduce_scatter (S = one output shard)  (n-1) S                   (n-1) S
all_gather (S = one input shard)       (n-1) S                   (n-1) S
broadcast (pipelined chain from src)   S, except the chain's end S, except src
reduce (S = tensor)                    (n-1)/n S                 (n-1)/n S
=====================================  ========================  ==========================

Gloo and NCCL pick their own algorithms (trees, halving-doubling), which move about the same
volume; the counts are the textbook volumes that the papers' 2Psi and 3Psi refer to, measured on
the calls the code actually made (padding and extra calls included). ``dist.measure()`` counts a
region of code on a rank; :func:`new_group` names a group so that counts read ``intra0`` rather
than ``ranks(0,1)``.

**torchrun.** Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) no
processes are started: ``pool()`` joins the group torchrun made and ``run`` calls ``fn`` in this
process, then gathers every rank's result, so a script written against this module scales to
more machines unchanged::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 script.py
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import datetime
import dis
import importlib
import io
import linecache
import marshal
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable

import torch
import torch.distributed as tdist

__all__ = ["Ranks", "RunResult", "Traffic", "RankFailed", "RanksNotImplemented", "pool", "shutdown",
           "under_torchrun", "torchrun_world_size", "new_group", "name_group", "group_label", "measure", "traffic", "reset_traffic",
           "instrument", "dumps", "loads", "torchrun_command"]

DEFAULT_TIMEOUT = 120.0  # seconds a run may take before every rank is stopped
DEFAULT_START_TIMEOUT = 180.0  # seconds for the ranks to start (4 processes importing torch on 2 cores)
DEFAULT_GRACE = 3.0  # seconds the other ranks get to finish after one raised


# =============================================================================================
# Sending functions and classes defined in a notebook to the ranks (pickle by value)
# =============================================================================================

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


# =============================================================================================
# Traffic: bytes each rank sends and receives, per operation and process group
# =============================================================================================

_GROUP_LABELS: dict[str, str] = {}


def group_label(group=None) -> str:
    """``'world'`` for the default group, the name given to :func:`new_group`, else ``'ranks(0,1)'``."""
    if group is None or group is tdist.GroupMember.WORLD:
        return "world"
    label = _GROUP_LABELS.get(getattr(group, "group_name", ""))
    if label:
        return label
    try:
        return "ranks(" + ",".join(str(r) for r in tdist.get_process_group_ranks(group)) + ")"
    except Exception:  # noqa: BLE001 - a group this rank is not part of
        return "other"


def name_group(group, label: str):
    """Give ``group`` a label for traffic counts (``'intra0'``, ``'tensor'``); returns the group."""
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    name = getattr(group, "group_name", None)
    if name is None:
        raise TypeError(f"group must be a ProcessGroup (from torch.distributed.new_group), got {type(group).__name__}")
    _GROUP_LABELS[name] = label
    return group


def new_group(ranks: Iterable[int], *, label: str | None = None, **kwargs):
    """``torch.distributed.new_group(ranks)`` with a label for its traffic. Every rank must call it."""
    ranks = sorted(int(r) for r in ranks)
    world = tdist.get_world_size()
    if not ranks or len(set(ranks)) != len(ranks) or not all(0 <= r < world for r in ranks):
        raise ValueError(f"ranks must be distinct ranks in [0, {world}), got {ranks}")
    group = tdist.new_group(ranks, **kwargs)
    if label is not None and group is not None and group is not tdist.GroupMember.NON_GROUP_MEMBER:
        name_group(group, label)
    return group


@dataclass
class Traffic:
    """Bytes counted per ``(operation, group label, peer)``; ``peer`` is a global rank for send/recv."""

    counts: dict = field(default_factory=dict)  # (op, group, peer) -> [calls, sent, received]

    def add(self, op: str, group: str, peer: int | None, sent: float, received: float) -> None:
        entry = self.counts.setdefault((op, group, peer), [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += sent
        entry[2] += received

    def _select(self, op, group, peer):
        def wanted(value, filt):
            if filt is None:
                return True
            if isinstance(filt, (set, list, tuple, frozenset)):
                return value in filt
            if callable(filt):
                return bool(filt(value))
            return value == filt

        for (o, g, p), entry in self.counts.items():
            if wanted(o, op) and wanted(g, group) and wanted(p, peer):
                yield (o, g, p), entry

    def sent(self, op=None, group=None, peer=None) -> float:
        """Bytes sent, summed over the calls that match (each filter: a value, a set, or a predicate)."""
        return sum(e[1] for _, e in self._select(op, group, peer))

    def received(self, op=None, group=None, peer=None) -> float:
        return sum(e[2] for _, e in self._select(op, group, peer))

    def calls(self, op=None, group=None, peer=None) -> int:
        return sum(e[0] for _, e in self._select(op, group, peer))

    def rows(self) -> list[dict]:
        """Tidy rows, one per (op, group, peer), for :func:`course.bench.format_table`."""
        return [{"op": o, "group": g, "peer": "" if p is None else p, "calls": e[0], "sent_bytes": e[1],
                 "received_bytes": e[2]} for (o, g, p), e in sorted(self.counts.items(), key=str)]

    def __add__(self, other: "Traffic") -> "Traffic":
        if not isinstance(other, Traffic):
            return NotImplemented
        total = Traffic({k: list(v) for k, v in self.counts.items()})
        for key, (calls, sent, received) in other.counts.items():
            entry = total.counts.setdefault(key, [0, 0.0, 0.0])
            entry[0] += calls
            entry[1] += sent
            entry[2] += received
        return total

    def __radd__(self, other):
        return self if other == 0 else self.__add__(other)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __str__(self) -> str:
        if not self.counts:
            return "(no traffic)"
        return "\n".join(f"{o:<22} {g:<14} {'' if p is None else 'peer ' + str(p):<8} {e[0]:>5} calls "
                         f"{e[1]:>14,.0f} B sent" for (o, g, p), e in sorted(self.counts.items(), key=str))


_RUN_TRAFFIC = Traffic()  # everything counted during the current run on this rank
_ACTIVE: list[Traffic] = []  # open dist.measure() regions
_INSTRUMENTED = False
_NESTING = threading.local()
_ORIGINALS: dict[str, Callable] = {}


def _record(op: str, group, peer: int | None, sent: float, received: float) -> None:
    label = group_label(group)
    _RUN_TRAFFIC.add(op, label, peer, sent, received)
    for region in _ACTIVE:
        region.add(op, label, peer, sent, received)


def traffic() -> Traffic:
    """What this rank has sent since the run started (a copy)."""
    return Traffic({k: list(v) for k, v in _RUN_TRAFFIC.counts.items()})


def reset_traffic() -> None:
    _RUN_TRAFFIC.counts.clear()


@contextlib.contextmanager
def measure():
    """Count the traffic of a region of code on a rank: ``with dist.measure() as t: ...; t.sent()``."""
    region = Traffic()
    _ACTIVE.append(region)
    try:
        yield region
    finally:
        _ACTIVE.remove(region)


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _size_and_rank(group) -> tuple[int, int]:
    return tdist.get_world_size(group), tdist.get_rank(group)


def _group_rank_of(group, global_rank: int) -> int:
    if group is None or group is tdist.GroupMember.WORLD:
        return global_rank
    return tdist.get_group_rank(group, global_rank)


def _global_rank_of(group, group_rank: int) -> int:
    if group is None or group is tdist.GroupMember.WORLD:
        return group_rank
    return tdist.get_global_rank(group, group_rank)


def _count(op: str, a: dict, returned: Any) -> None:  # noqa: C901 - one branch per operation
    group = a.get("group")
    if op in ("send", "isend", "recv", "irecv"):
        peer = a.get("dst" if "send" in op else "src")
        group_peer = a.get("group_dst" if "send" in op else "group_src")
        if peer is None and group_peer is not None:
            peer = _global_rank_of(group, group_peer)
        if peer is None and op == "recv" and isinstance(returned, int):
            peer = returned  # recv from any source returns the sender
        size = _nbytes(a.get("tensor"))
        _record(op, group, peer, size if "send" in op else 0, size if "recv" in op else 0)
        return
    n, me = _size_and_rank(group)
    if me < 0 or n < 1:  # this rank is not in the group: the call does nothing here
        return
    if op == "all_reduce":
        s = _nbytes(a["tensor"]) * 2 * (n - 1) / n
        _record(op, group, None, s, s)
    elif op == "reduce":
        s = _nbytes(a["tensor"]) * (n - 1) / n
        _record(op, group, None, s, s)
    elif op == "broadcast":
        src = a.get("src")
        group_src = a.get("group_src")
        root = group_src if group_src is not None else _group_rank_of(group, src if src is not None else 0)
        position = (me - root) % n  # place in the chain root -> root+1 -> ... -> root-1
        size = _nbytes(a["tensor"])
        _record(op, group, None, size if position < n - 1 else 0, size if position > 0 else 0)
    elif op == "all_gather":
        s = _nbytes(a["tensor"]) * (n - 1)
        _record(op, group, None, s, s)
    elif op in ("all_gather_into_tensor", "all_gather_single"):
        s = _nbytes(a["input_tensor"]) * (n - 1)
        _record("all_gather", group, None, s, s)
    elif op in ("reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single"):
        s = _nbytes(a["output"]) * (n - 1)
        _record("reduce_scatter", group, None, s, s)


_WRAPPED = ("all_reduce", "reduce", "broadcast", "all_gather", "all_gather_into_tensor", "all_gather_single",
            "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "send", "recv", "isend", "irecv")


def instrument() -> None:
    """Wrap the collectives of ``torch.distributed`` on this process to count traffic (idempotent).

    Only calls made through ``torch.distributed.<name>`` (``import torch.distributed as dist;
    dist.all_reduce(...)``) are counted; torch's own DDP reducer calls C++ directly and is not.
    ``isend``/``irecv`` are wrapped in ``distributed_c10d`` as well, where ``P2POp`` and
    ``batch_isend_irecv`` look them up.
    """
    global _INSTRUMENTED
    if _INSTRUMENTED:
        return
    import functools
    import inspect

    from torch.distributed import distributed_c10d as c10d

    for name in _WRAPPED:
        original = getattr(tdist, name, None)
        if original is None:
            continue
        signature = inspect.signature(original)

        def counted(*args, __original=original, __signature=signature, __name=name, **kwargs):
            depth = getattr(_NESTING, "depth", 0)
            _NESTING.depth = depth + 1
            try:
                returned = __original(*args, **kwargs)
            finally:
                _NESTING.depth = depth
            if depth:  # called by another counted operation (recv calls irecv): counted there
                return returned
            try:
                bound = __signature.bind(*args, **kwargs)
                bound.apply_defaults()
                _count(__name, dict(bound.arguments), returned)
            except Exception:  # noqa: BLE001 - counting must never break a collective that worked
                pass
            return returned

        counted = functools.wraps(original)(counted)
        counted.__wrapped_by_course__ = True
        _ORIGINALS[name] = original
        setattr(tdist, name, counted)
        if name in ("isend", "irecv"):
            setattr(c10d, name, counted)
    _INSTRUMENTED = True


# =============================================================================================
# Results and failures
# =============================================================================================


class RankFailed(RuntimeError):
    """One or more ranks raised, died, or ran out of time. The message has their tracebacks.

    Attributes: ``failures`` ({rank: traceback text}), ``stdout`` (list per rank of what it
    printed before), ``kind`` ('raised', 'died' or 'timeout').
    """

    def __init__(self, message: str, *, failures: dict[int, str], stdout: list[str], kind: str,
                 exception_types: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.failures, self.stdout, self.kind = failures, stdout, kind
        self.exception_types = exception_types or {}


    @property
    def first_error(self) -> str:
        """The last line of the lowest failing rank's traceback, e.g. ``'ValueError: bad shape'``."""
        if not self.failures:
            return ""
        lines = self.failures[min(self.failures)].strip().splitlines()
        return lines[-1] if lines else ""


class RanksNotImplemented(RankFailed, NotImplementedError):
    """Every rank that failed raised NotImplementedError (an exercise stub): 'not done yet'."""


@dataclass
class RunResult:
    """What :meth:`Ranks.run` returns: one entry per rank, in rank order."""

    results: list
    stdout: list[str]
    stderr: list[str]
    traffic: list[Traffic]
    seconds: float
    backend: str

    @property
    def world_size(self) -> int:
        return len(self.results)

    def show(self, ranks: Iterable[int] | None = None) -> None:
        """Print what each rank printed, each line prefixed with ``[rank r]``."""
        for r in (range(self.world_size) if ranks is None else ranks):
            for line in self.stdout[r].splitlines():
                print(f"[rank {r}] {line}")

    def __repr__(self) -> str:
        return (f"RunResult({self.world_size} ranks, {self.backend}, {self.seconds:.2f} s, "
                f"results={[type(r).__name__ for r in self.results]})")


# =============================================================================================
# The worker: one process per rank
# =============================================================================================


def _parent_watch(parent_pid: int) -> None:
    """Exit when the notebook kernel that started this rank goes away (no orphan processes)."""
    try:  # Linux: the kernel delivers SIGKILL to us when our parent dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux; the thread below still watches
        pass

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(1.0)

    if os.getppid() != parent_pid:
        os._exit(3)
    threading.Thread(target=watch, daemon=True, name="course-dist-parent-watch").start()


def _send(conn: Connection, message: tuple) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _init_group(config: dict, generation: int) -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
    _GROUP_LABELS.clear()
    store = tdist.TCPStore(config["host"], config["port"], None, False,
                           timeout=datetime.timedelta(seconds=config["start_timeout"]))
    prefixed = tdist.PrefixStore(f"generation{generation}/", store)
    backend = config["backend"]
    options = {}
    if backend == "nccl":
        torch.cuda.set_device(config["rank"])
        options["device_id"] = torch.device("cuda", config["rank"])
    tdist.init_process_group(backend, store=prefixed, rank=config["rank"], world_size=config["world_size"],
                             timeout=datetime.timedelta(seconds=config["collective_timeout"]), **options)


def _run_here(payload: bytes) -> tuple:
    """Unpickle ``(fn, args, kwargs)``, call it with output captured; never raises."""
    reset_traffic()
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            fn, args, kwargs = loads(payload)
            result = fn(*args, **kwargs)
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001
            raise TypeError(f"the function returned a {type(result).__name__}, which cannot be sent back "
                            f"({error}); return tensors, numbers, lists or dicts") from None
        return ("done", True, data, out.getvalue(), err.getvalue(), traffic().counts, time.perf_counter() - start,
                "")
    except BaseException as error:  # noqa: BLE001 - report everything, including SystemExit
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # start the traceback at the learner's code
        text = "".join(traceback.format_exception(type(error), error, tb))
        return ("done", False, text, out.getvalue(), err.getvalue(), traffic().counts,
                time.perf_counter() - start, type(error).__name__)


def _worker_main() -> None:
    """Entry point of a rank process: ``python -c '...' FD PARENT_PID``."""
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    _parent_watch(parent_pid)
    conn = Connection(fd)
    config = pickle.loads(conn.recv_bytes())
    sys.path[:0] = [p for p in config["sys_path"] if p not in sys.path]
    torch.set_num_threads(config["threads"])
    instrument()
    generation = 0
    try:
        _init_group(config, generation)
        _send(conn, ("ready", os.getpid()))
        while True:
            kind, *rest = pickle.loads(conn.recv_bytes())
            if kind == "run":
                _send(conn, _run_here(rest[0]))
            elif kind == "reinit":
                generation = rest[0]
                _init_group(config, generation)
                _send(conn, ("ready", os.getpid()))
            elif kind == "exit":
                break
    except (EOFError, OSError):
        pass  # the parent closed the connection: leave quietly
    finally:
        os._exit(0)  # skip destroy_process_group: peers may be gone, and waiting for them could hang


# =============================================================================================
# The pool of ranks, started from a notebook (or joined under torchrun)
# =============================================================================================


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or anything that sets the env:// variables)."""
    env = os.environ
    return "TORCHELASTIC_RUN_ID" in env or all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def torchrun_world_size() -> int | None:
    """The number of ranks torchrun started, or None when not under torchrun.

    Notebooks write ``WORLD = dist.torchrun_world_size() or 4``: four local ranks, or however many
    torchrun started when the same code runs as a script on a cluster.
    """
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else None


def _loopback_interface() -> str | None:
    try:
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    except OSError:
        pass
    return None


def _choose_backend(backend: str, world_size: int) -> str:
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    if backend == "nccl" and (not torch.cuda.is_available() or torch.cuda.device_count() < world_size):
        raise ValueError(f"backend='nccl' needs one GPU per rank: {world_size} ranks, "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s)")
    return backend


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class Ranks:
    """``world_size`` ranks in one process group, kept alive between runs.

    ``Ranks(4)`` starts four processes on this machine and returns at once; the first
    :meth:`run` waits until they have joined the group. Under torchrun it joins torchrun's group
    instead (``world_size`` then must match or be None). Close with :meth:`close` (or a ``with``
    block); :func:`pool` keeps one shared, cached instance per size.
    """

    def __init__(self, world_size: int | None = 4, *, backend: str = "auto", timeout: float = DEFAULT_TIMEOUT,
                 start_timeout: float = DEFAULT_START_TIMEOUT, grace: float = DEFAULT_GRACE,
                 threads_per_rank: int = 1) -> None:
        self.torchrun = under_torchrun()
        if self.torchrun:
            env_size = int(os.environ["WORLD_SIZE"])
            if world_size is not None and world_size != env_size:
                raise ValueError(f"world_size={world_size} but torchrun started {env_size} ranks; pass None")
            world_size = env_size
        if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= 64:
            raise ValueError(f"world_size must be an int in [1, 64], got {world_size!r}")
        if isinstance(threads_per_rank, bool) or not isinstance(threads_per_rank, int) or threads_per_rank < 1:
            raise ValueError(f"threads_per_rank must be an int >= 1, got {threads_per_rank!r}")
        self.world_size = world_size
        self.timeout = _positive("timeout", timeout)
        self.start_timeout = _positive("start_timeout", start_timeout)
        self.grace = _positive("grace", grace)
        self.threads = threads_per_rank
        self.requested_backend = backend
        self.backend = _choose_backend(backend, world_size) if not self.torchrun else None
        self.starts = 0  # how many times processes were started (a test reads it)
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._logs: list[str] = []
        self._store = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._ready = False
        self._generation = 0
        self._needs_reinit = False
        self._closed = False
        self._torchrun_runs = 0
        if self.torchrun:
            self._join_torchrun(backend)
        else:
            self._start()
        _LIVE.add(self)

    # -- starting and stopping ----------------------------------------------------------------

    def _join_torchrun(self, backend: str) -> None:
        if not tdist.is_initialized():
            chosen = backend if backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
            if chosen == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            tdist.init_process_group(chosen, init_method="env://")
        self.backend = tdist.get_backend()
        instrument()
        self._ready = True

    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="course-dist-")
        self._store = tdist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False,
                                     timeout=datetime.timedelta(seconds=self.start_timeout))
        env = dict(os.environ)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            env.pop(key, None)
        env.update({"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                    "PYTHONUNBUFFERED": "1", "COURSE_DIST_RANK_PROCESS": "1"})
        interface = _loopback_interface()
        if interface and self.backend == "gloo":
            env["GLOO_SOCKET_IFNAME"] = interface  # gloo talks over 127.0.0.1 only
        bootstrap = "import sys; from course.dist import _worker_main; _worker_main()"
        self.starts += 1
        self._generation = 0
        self._needs_reinit = False
        try:
            for rank in range(self.world_size):
                parent_end, child_end = socket.socketpair()
                log_path = os.path.join(self._tmp.name, f"rank{rank}.log")
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen([sys.executable, "-c", bootstrap, str(child_end.fileno()),
                                             str(os.getpid())], pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                child_end.close()
                conn = Connection(parent_end.detach())
                config = {"rank": rank, "world_size": self.world_size, "backend": self.backend, "host": "127.0.0.1",
                          "port": self._store.port, "threads": self.threads, "sys_path": list(sys.path),
                          "start_timeout": self.start_timeout, "collective_timeout": max(self.timeout, 60.0)}
                conn.send_bytes(pickle.dumps(config))
                self._procs.append(proc)
                self._conns.append(conn)
                self._logs.append(log_path)
        except BaseException:
            self._kill()
            raise
        self._ready = False

    def _wait_ready(self, timeout: float | None = None) -> None:
        if self._ready:
            return
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        waiting = set(range(self.world_size))
        try:
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._failure("timeout", {r: f"rank {r} did not start within {timeout:g} s"
                                                    for r in waiting}, {}, [""] * self.world_size)
                for conn in wait([self._conns[r] for r in waiting], timeout=left):
                    rank = self._conns.index(conn)
                    try:
                        message = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        raise self._failure("died", {rank: f"rank {rank} died while starting "
                                                           f"(exit code {self._exit_code(rank)})"},
                                             {}, [""] * self.world_size) from None
                    if message[0] == "ready":
                        waiting.discard(rank)
        except BaseException:
            self._kill()
            raise
        self._ready = True

    def _reinit(self) -> None:
        """Rebuild the process group in the same processes after a run in which ranks raised."""
        self._generation += 1
        for conn in self._conns:
            _send(conn, ("reinit", self._generation))
        self._ready = False
        self._needs_reinit = False
        self._wait_ready(timeout=min(self.start_timeout, 30.0))

    def _exit_code(self, rank: int) -> int | None:
        try:
            return self._procs[rank].wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None

    def _log_tail(self, rank: int, lines: int = 8) -> str:
        try:
            with open(self._logs[rank], errors="replace") as f:
                text = f.read().splitlines()
        except (OSError, IndexError):
            return ""
        text = [t for t in text if not t.startswith("course: ")]
        return "\n".join(text[-lines:])

    def _kill(self) -> None:
        """Stop every rank process now (SIGKILL), and forget them; the next run starts new ones."""
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except OSError:
                    pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass
        self._procs, self._conns = [], []
        self._store = None
        self._ready = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._logs = []

    def close(self) -> None:
        """Stop the ranks (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self.torchrun:
            for conn in self._conns:
                try:
                    _send(conn, ("exit",))
                except OSError:
                    pass
            deadline = time.monotonic() + 5
            for proc in self._procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            self._kill()
        _LIVE.discard(self)

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self.torchrun:
                self._kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def __repr__(self) -> str:
        where = "torchrun" if self.torchrun else ("running" if self.alive else "stopped")
        return f"Ranks(world_size={self.world_size}, backend={self.backend}, {where})"

    # -- running --------------------------------------------------------------------------------

    def run(self, fn: Callable, *args, timeout: float | None = None, **kwargs) -> RunResult:
        """Call ``fn(*args, **kwargs)`` on every rank; return each rank's result, output and traffic.

        ``timeout`` (seconds; default the pool's) bounds the whole run. Raises :class:`RankFailed`
        when a rank raises, dies or runs out of time (see the module's docstring).
        """
        if self._closed:
            raise RuntimeError("this Ranks was closed; make a new one (or use dist.pool())")
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        limit = self.timeout if timeout is None else _positive("timeout", timeout)
        if self.torchrun:
            return self._run_torchrun(fn, args, kwargs)
        payload = dumps((fn, args, kwargs))  # refuses unsendable globals before anything starts
        if not self.alive:
            self._kill()
            self._start()
        if self._needs_reinit:
            self._reinit()
        self._wait_ready()
        return self._run_local(payload, limit)

    def _run_local(self, payload: bytes, limit: float) -> RunResult:
        n = self.world_size
        replies: dict[int, tuple] = {}
        start = time.monotonic()
        try:
            message = pickle.dumps(("run", payload), protocol=pickle.HIGHEST_PROTOCOL)
            for conn in self._conns:
                conn.send_bytes(message)
            first_error: float | None = None
            while len(replies) < n:
                now = time.monotonic()
                deadline = start + limit if first_error is None else min(start + limit, first_error + self.grace)
                pending = [self._conns[r] for r in range(n) if r not in replies]
                ready = wait(pending, timeout=max(0.0, deadline - now))
                if not ready:
                    stdout = [replies[r][3] if r in replies else "" for r in range(n)]
                    failures = {r: replies[r][2] for r in replies if not replies[r][1]}
                    types_ = {r: replies[r][7] for r in failures}
                    if first_error is None:
                        for r in range(n):
                            if r not in replies:
                                failures[r] = f"rank {r} did not finish within the {limit:g} s time limit"
                        raise self._failure("timeout", failures, types_, stdout)
                    stuck = [r for r in range(n) if r not in replies]
                    for r in stuck:
                        failures[r] = f"rank {r} was still running {self.grace:g} s after rank(s) failed"
                    raise self._failure("raised", failures, types_, stdout, stopped=stuck)
                for conn in ready:
                    rank = self._conns.index(conn)
                    try:
                        reply = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        stdout = [replies[r][3] if r in replies else "" for r in range(n)]
                        failures = {r: replies[r][2] for r in replies if not replies[r][1]}
                        code = self._exit_code(rank)
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        tail = self._log_tail(rank)
                        failures[rank] = (f"rank {rank} died ({how}) without reporting a result"
                                          + (f"; its last output:\n{tail}" if tail else ""))
                        raise self._failure("died", failures, {r: replies[r][7] for r in replies
                                                               if not replies[r][1]}, stdout) from None
                    replies[rank] = reply
                    if not reply[1] and first_error is None:
                        first_error = time.monotonic()
        except BaseException:
            self._kill()  # a rank is stuck, dead or out of time, or we were interrupted: stop everyone
            raise
        seconds = time.monotonic() - start
        failed = {r: replies[r][2] for r in range(n) if not replies[r][1]}
        if failed:
            self._needs_reinit = True  # every rank answered: keep the processes, rebuild the group
            raise self._failure("raised", failed, {r: replies[r][7] for r in failed},
                                [replies[r][3] for r in range(n)], keep=True)
        return RunResult([pickle.loads(replies[r][2]) for r in range(n)], [replies[r][3] for r in range(n)],
                         [replies[r][4] for r in range(n)], [Traffic(replies[r][5]) for r in range(n)], seconds,
                         self.backend)

    def _failure(self, kind: str, failures: dict[int, str], exception_types: dict[int, str], stdout: list[str],
                 keep: bool = False, stopped: Iterable[int] = ()) -> RankFailed:
        stopped = sorted(stopped)
        culprits = [r for r in sorted(failures) if r not in stopped]
        what = {"raised": "raised an exception", "died": "died", "timeout": "ran out of time"}[kind]
        header = f"rank(s) {culprits} {what}"
        if stopped:
            header += f"; rank(s) {stopped} were still waiting (most likely in a collective) and were stopped"
        header += "; the group was " + ("rebuilt" if keep else "stopped and the next run starts it again") + "."
        lines, shown = [header], set()
        for rank in culprits + stopped:
            text = failures[rank].rstrip()
            if text in shown:
                lines.append(f"--- rank {rank}: the same as above")
                continue
            shown.add(text)
            lines.append(f"--- rank {rank}:\n{text}")
            if stdout[rank].strip() and rank == culprits[0]:
                lines.append(f"--- rank {rank} printed:\n{stdout[rank].rstrip()[-2000:]}")
        cls = RanksNotImplemented if exception_types and set(exception_types.values()) == {
            "NotImplementedError"} else RankFailed
        return cls("\n".join(lines), failures=failures, stdout=stdout, kind=kind, exception_types=exception_types)

    def _run_torchrun(self, fn: Callable, args: tuple, kwargs: dict) -> RunResult:
        """Call ``fn`` in this process; then agree with the other ranks, through the store, on
        whether everyone succeeded, so that every rank raises the same :class:`RankFailed`.

        A rank that raised waits ``grace`` seconds for the others' verdicts; if some never come
        (they are stuck in a collective waiting for it), it prints its traceback and exits, and
        torchrun stops the rest: bounded, like the local case.
        """
        reset_traffic()
        self._torchrun_runs += 1
        rank, n = tdist.get_rank(), self.world_size
        out, err = io.StringIO(), io.StringIO()
        start = time.monotonic()
        result, failure, kind = None, "", ""
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                result = fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - reported to every rank below
            failure = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            kind = type(error).__name__
        store = tdist.distributed_c10d._get_default_store()
        prefix = f"course-dist/run{self._torchrun_runs}/"
        store.set(prefix + str(rank), pickle.dumps((failure, kind, out.getvalue())))
        keys = [prefix + str(r) for r in range(n)]
        try:
            store.wait(keys, datetime.timedelta(seconds=self.grace if failure else self.timeout))
        except Exception:  # noqa: BLE001 - some rank never finished
            sys.__stderr__.write(f"rank {rank} failed and the other ranks did not finish within "
                                 f"{self.grace if failure else self.timeout:g} s:\n{failure}")
            sys.__stderr__.flush()
            os._exit(1)
        verdicts = [pickle.loads(store.get(k)) for k in keys]
        failures = {r: v[0] for r, v in enumerate(verdicts) if v[0]}
        if failures:
            raise self._failure("raised", failures, {r: verdicts[r][1] for r in failures},
                                [v[2] for v in verdicts], keep=True)
        mine = (result, out.getvalue(), err.getvalue(), traffic().counts)
        gathered: list = [None] * n
        tdist.all_gather_object(gathered, mine)
        return RunResult([g[0] for g in gathered], [g[1] for g in gathered], [g[2] for g in gathered],
                         [Traffic(g[3]) for g in gathered], time.monotonic() - start, self.backend)


_LIVE: "set[Ranks]" = set()
_POOLS: dict[tuple, Ranks] = {}


def pool(world_size: int | None = 4, *, backend: str = "auto", **options) -> Ranks:
    """The shared :class:`Ranks` of this size and backend, started on first use and then reused.

    Notebook cells and the checks that run exercises on ranks share it, so the ranks start once.
    Under torchrun, ``world_size`` may be None (torchrun decides).
    """
    key = (world_size if not under_torchrun() else None, backend)
    ranks = _POOLS.get(key)
    if ranks is None or ranks._closed:
        ranks = Ranks(world_size, backend=backend, **options)
        _POOLS[key] = ranks
    return ranks


def shutdown() -> None:
    """Stop every pool this process started (also runs when Python exits)."""
    for ranks in list(_LIVE):
        try:
            ranks.close()
        except Exception:  # noqa: BLE001
            pass
    _POOLS.clear()


atexit.register(shutdown)


def torchrun_command(script: str, *, nnodes: int = 2, nproc_per_node: int = 8, endpoint: str = "HEAD_NODE:29500",
                     args: str = "") -> str:
    """The command that runs ``script`` on ``nnodes`` machines with ``nproc_per_node`` ranks each."""
    for name, value in (("nnodes", nnodes), ("nproc_per_node", nproc_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(script, str) or not script:
        raise ValueError(f"script must be a path, got {script!r}")
    rendezvous = "--standalone" if nnodes == 1 else f"--rdzv-backend c10d --rdzv-endpoint {endpoint}"
    return f"torchrun --nnodes {nnodes} --nproc-per-node {nproc_per_node} {rendezvous} {script}" + (
        f" {args}" if args else "")

