"""Run untrusted notebook cells in a fresh Jupyter kernel, with time limits, surviving anything.

:class:`KernelSession` executes one cell at a time and turns every way a cell can go wrong into
an :class:`Outcome`: it raised, it ran past its time limit (the kernel is interrupted; if it
does not answer, it is killed), or the kernel died (``os._exit``, a segfault, out of memory).
An optional memory limit caps the kernel's address space, so a cell that allocates too much
raises ``MemoryError`` (or torch's "can't allocate memory") in the kernel instead of exhausting
the grading machine.
:func:`execute_cells` builds on it: a cell that kills or wedges the kernel is skipped and the
notebook re-run from a fresh kernel, so one bad cell costs only its own exercise. So is a cell
whose time-limit interrupt landed inside an import: Python then drops only the module whose import
raised, while the submodules it had finished (and, for torch, their operator registrations in C++)
stay, so importing it again in that kernel fails with errors that have nothing to do with the
learner's code (measured here: "partially initialized module 'torch'", "Only a single TORCH_LIBRARY
can be used to register the namespace prims"; seen in CI: "Trying to override a python impl").
A fresh process starts clean.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

try:
    import resource  # POSIX only; the memory limit needs it, nothing else does
except ImportError:  # Windows
    resource = None

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

OUTPUT_KEEP = 2000  # characters of a cell's error text kept for the report


@dataclass
class Outcome:
    status: str  # "ok" | "error" | "timeout" | "dead"
    seconds: float
    error: str = ""
    stdout: str = ""  # what the cell printed, at most OUTPUT_KEEP characters (read only for the grader's own cells)


def kernel_env(extra: dict[str, str] | None = None, *, plots: bool = False) -> dict[str, str]:
    """The kernel's environment: deterministic outputs and this interpreter's path.

    ``plots=False`` (grading) renders no figures, which is faster; recording a solution keeps
    Jupyter's inline backend so the stored notebook shows its plots, as nbval's kernel does.
    """
    env = dict(os.environ)
    env.update({"COURSE_HEADLESS": "1", "PYTHONUNBUFFERED": "1"})
    if plots:
        env.pop("MPLBACKEND", None)
    else:
        env["MPLBACKEND"] = "Agg"
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


MIN_MEMORY_LIMIT = 2 << 30
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``8G``, ``512M`` or ``1073741824`` (binary units, case-insensitive)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])i?)?B?\s*", str(text), flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a positive size: {text!r} (examples: 8G, 512M, 1073741824)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])


def check_memory_limit(limit_bytes: int) -> None:
    """Raise before any kernel starts if ``limit_bytes`` cannot be applied here or is too small."""
    if resource is None or not hasattr(resource, "prlimit"):
        raise RuntimeError("a memory limit needs Linux (resource.prlimit); grade without one")
    if limit_bytes < MIN_MEMORY_LIMIT:
        raise ValueError(f"a memory limit below {MIN_MEMORY_LIMIT >> 30}G leaves no room for torch itself; "
                         f"got {limit_bytes} bytes")


def limit_address_space(pid: int, limit_bytes: int) -> None:
    """Cap the address space of process ``pid`` (each process it starts later inherits the cap).

    RLIMIT_AS counts virtual memory, which is more than the memory a process touches: a kernel
    that has imported torch, triton and the course holds about 1 GiB of it before doing any
    work, so limits below :data:`MIN_MEMORY_LIMIT` are refused rather than failing every cell.
    Not for a CUDA machine: the CUDA driver reserves far more address space than any useful limit
    (not tried here; the course's grading runs on CPUs).
    """
    check_memory_limit(limit_bytes)
    resource.prlimit(pid, resource.RLIMIT_AS, (limit_bytes, limit_bytes))


#: Runs in the kernel after a time-limit interrupt and prints the import the KeyboardInterrupt was
#: raised in. IPython keeps the last error's traceback in ``sys.last_traceback``; a frame running a
#: module's top-level code (``<module>``) under a name other than the notebook's ``__main__`` is an
#: import in progress (importlib hides its own frames from tracebacks, but not the module's), and so
#: is a frame of importlib itself, should one be left. The outermost one names what was being
#: imported. The record is then cleared, so a later interrupt is never judged by this one's
#: traceback. It imports only ``sys`` (importing more in a half-imported kernel could itself fail).
_INTERRUPTED_IMPORT_SOURCE = '''
import sys


def interrupted_import():
    error, tb = getattr(sys, "last_value", None), getattr(sys, "last_traceback", None)
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
    if not isinstance(error, KeyboardInterrupt):
        return ""
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_globals.get("__name__")
        if str(module).startswith("importlib._bootstrap"):
            return str(frame.f_locals.get("name", module))
        if frame.f_code.co_name == "<module>" and module not in (None, "__main__"):
            return str(module)
        tb = tb.tb_next
    return ""


print("course-interrupted-import:" + interrupted_import())
'''
#: the cell the grader runs: its own namespace, so none of the learner's names is added or replaced
INTERRUPTED_IMPORT_PROBE = f"__import__('builtins').exec({_INTERRUPTED_IMPORT_SOURCE!r}, {{'__name__': '__course_interrupt_probe__'}})"


class KernelSession:
    """One kernel in a working directory; run cells with a time limit each (and, optionally, a
    cap on its memory, ``memory_limit`` bytes of address space)."""

    def __init__(self, cwd: str, *, env: dict[str, str] | None = None, startup_timeout: float = 60,
                 memory_limit: int | None = None) -> None:
        self.cwd, self.env, self.startup_timeout = cwd, env or kernel_env(), startup_timeout
        self.memory_limit = memory_limit
        self.client: NotebookClient | None = None
        self._context = None

    def start(self) -> None:
        nb = nbformat.v4.new_notebook()
        # Plain tracebacks: only an error's name and message reach a report, and IPython's default
        # formatting (stack_data, which highlights each frame's whole source file) kept the kernel
        # busy 8 to 20 s after an interrupt inside torch's import (measured here), long enough to
        # pass for a kernel that ignores interrupts; in Plain mode it answered at once.
        self.client = NotebookClient(nb, kernel_name="python3", timeout=60, interrupt_on_timeout=True,
                                     extra_arguments=["--InteractiveShell.xmode=Plain"],
                                     allow_errors=True, startup_timeout=int(self.startup_timeout),
                                     error_on_timeout={"ename": "CellTimeoutError", "evalue": "time limit",
                                                       "traceback": []},
                                     record_timing=False, resources={"metadata": {"path": self.cwd}})
        # the kernel's own stderr (its TCP warning, C-level crashes) is not the learner's output
        self._context = self.client.setup_kernel(env=self.env, cwd=self.cwd, stderr=subprocess.DEVNULL)
        self._context.__enter__()
        if self.memory_limit:
            limit_address_space(self.client.km.provisioner.pid, self.memory_limit)

    def stop(self) -> None:
        if self._context is not None:
            try:
                self._context.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - a dead kernel may fail to shut down cleanly
                pass
            if self.client is not None and self.client.km is not None:
                try:
                    self.client.km.shutdown_kernel(now=True)
                except Exception:  # noqa: BLE001
                    pass
        self.client, self._context = None, None

    def run(self, code: str, timeout: float) -> Outcome:
        """Execute ``code``; never raises for anything the code does."""
        assert self.client is not None, "start() the session first"
        cell = nbformat.v4.new_code_cell(code)
        self.client.nb.cells = [cell]
        self.client.timeout = max(1, int(timeout))
        start = time.perf_counter()
        try:
            self.client.execute_cell(cell, 0)
        except DeadKernelError:
            return Outcome("dead", time.perf_counter() - start, "the kernel died (os._exit, a crash, or out of memory)")
        except Exception as error:  # noqa: BLE001 - e.g. a kernel that stops answering
            return Outcome("dead", time.perf_counter() - start, f"the kernel stopped answering: {error}")
        seconds = time.perf_counter() - start
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        # An interrupted cell reports KeyboardInterrupt (or nbclient's CellTimeoutError): the time
        # it took tells a timeout apart from a learner's own error.
        if seconds >= self.client.timeout or any(o.get("ename") == "CellTimeoutError" for o in errors):
            return Outcome("timeout", seconds, f"ran longer than the {int(timeout)} s limit")
        if errors:
            return Outcome("error", seconds, f"{errors[0].get('ename')}: {errors[0].get('evalue')}"[:OUTPUT_KEEP])
        printed = "".join(o.get("text", "") for o in cell.outputs
                          if o.get("output_type") == "stream" and o.get("name") == "stdout")
        return Outcome("ok", seconds, stdout=printed[:OUTPUT_KEEP])

    def responsive(self, timeout: float = 10) -> bool:
        return self.run("pass", timeout).status == "ok"

    def after_interrupt(self, timeout: float = 10) -> tuple[bool, str]:
        """After a cell was interrupted at its time limit: ``(responsive, module)``, where ``module``
        names the import the interrupt landed in ("" when it landed elsewhere).

        The kernel answers, so a submission could lie; it gains nothing by it: either answer only
        decides whether its own cell is skipped and the notebook re-run, never a verdict.
        """
        outcome = self.run(INTERRUPTED_IMPORT_PROBE, timeout)
        if outcome.status in ("timeout", "dead"):
            return False, ""
        found = re.search(r"^course-interrupted-import:(.*)$", outcome.stdout, flags=re.MULTILINE)
        return True, (found.group(1).strip()[:200] if found else "")

    def __enter__(self) -> "KernelSession":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Execution:
    session: KernelSession | None
    events: list[str] = field(default_factory=list)  # one line per cell that went wrong
    skipped: list[int] = field(default_factory=list)
    finished: bool = True
    seconds: float = 0.0


def cell_label(i: int, ids: list[str] | None) -> str:
    """How a report names code cell ``i``: its index among the code cells and, if known, its id."""
    cell_id = ids[i] if ids is not None and i < len(ids) else None
    return f"cell {i} (id {cell_id})" if cell_id else f"cell {i}"


def execute_cells(sources: list[str], cwd: str, *, cell_timeout: float, total_timeout: float,
                  max_restarts: int = 3, env: dict[str, str] | None = None, on_cell=None,
                  memory_limit: int | None = None, ids: list[str] | None = None) -> Execution:
    """Run ``sources`` in order in a fresh kernel, recovering from cells that kill or wedge it.

    Returns the live session (for running checks afterwards) and what went wrong. ``on_cell(i,
    session, outcome)`` is called after each cell (the meta-test uses it to probe exercises).
    ``ids`` (the cells' notebook ids, optional) name the cells in the events beside their index.

    A cell past its time limit is interrupted. It is skipped and the notebook re-run from a fresh
    kernel (at most ``max_restarts`` times) when the kernel then does not answer, or when the
    interrupt landed inside an import, which leaves that kernel's modules half-imported; otherwise
    the run goes on in the same kernel. A cell that kills the kernel is skipped the same way.
    """
    if ids is not None and len(ids) != len(sources):
        raise ValueError(f"ids: expected one per cell ({len(sources)}), got {len(ids)}")
    start = time.perf_counter()
    skip: set[int] = set()
    restarts: list[str] = []  # why earlier attempts were abandoned
    for _attempt in range(max_restarts + 1):
        session = KernelSession(cwd, env=env, memory_limit=memory_limit)
        session.start()
        events: list[str] = []
        restart = False
        finished = True
        for i, code in enumerate(sources):
            if i in skip or not code.strip():
                continue
            remaining = total_timeout - (time.perf_counter() - start)
            if remaining <= 1:
                events.append(f"total time limit of {total_timeout:g} s reached; cells from {i} on were not run")
                finished = False
                break
            outcome = session.run(code, min(cell_timeout, remaining))
            cell = cell_label(i, ids)
            if outcome.status == "timeout" and remaining < cell_timeout:  # say which limit stopped it
                outcome.error = (f"ran longer than the {int(remaining)} s left of the notebook's "
                                 f"{total_timeout:g} s limit")
            if outcome.status == "error":
                events.append(f"{cell} raised {outcome.error}")
            elif outcome.status == "timeout":
                responsive, module = session.after_interrupt()
                if not responsive:
                    events.append(f"{cell} {outcome.error} and was interrupted, but it left the kernel unresponsive; "
                                  "it is skipped and the notebook re-run in a fresh kernel")
                    restart = True
                elif module:
                    events.append(f"{cell} {outcome.error} and was interrupted inside the import of {module}, which "
                                  "leaves modules half-imported; it is skipped and the notebook re-run in a fresh kernel")
                    restart = True
                else:
                    events.append(f"{cell} {outcome.error}; it was interrupted")
            elif outcome.status == "dead":
                events.append(f"{cell}: {outcome.error}; it is skipped and the notebook re-run in a fresh kernel")
                restart = True
            if restart:
                skip.add(i)
                restarts.append(events[-1])
                session.stop()
                break
            if on_cell is not None:
                on_cell(i, session, outcome)
        if not restart:
            kept = [e for e in events if e not in restarts]
            return Execution(session, restarts + kept, sorted(skip), finished, time.perf_counter() - start)
    return Execution(None, restarts + [f"gave up after {max_restarts} kernel restarts"], sorted(skip), False,
                     time.perf_counter() - start)
