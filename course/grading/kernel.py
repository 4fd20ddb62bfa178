"""Run untrusted notebook cells in a fresh Jupyter kernel, with time limits, surviving anything.

:class:`KernelSession` executes one cell at a time and turns every way a cell can go wrong into
an :class:`Outcome`: it raised, it ran past its time limit (the kernel is interrupted; if it
does not answer, it is killed), or the kernel died (``os._exit``, a segfault, out of memory).
An optional memory limit caps the kernel's address space, so a cell that allocates too much
raises ``MemoryError`` (or torch's "can't allocate memory") in the kernel instead of exhausting
the grading machine.
:func:`execute_cells` builds on it: a cell that kills or wedges the kernel is skipped and the
notebook re-run from a fresh kernel, so one bad cell costs only its own exercise.
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
        self.client = NotebookClient(nb, kernel_name="python3", timeout=60, interrupt_on_timeout=True,
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
        return Outcome("ok", seconds)

    def responsive(self, timeout: float = 10) -> bool:
        return self.run("pass", timeout).status == "ok"

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


def execute_cells(sources: list[str], cwd: str, *, cell_timeout: float, total_timeout: float,
                  max_restarts: int = 3, env: dict[str, str] | None = None, on_cell=None,
                  memory_limit: int | None = None) -> Execution:
    """Run ``sources`` in order in a fresh kernel, recovering from cells that kill or wedge it.

    Returns the live session (for running checks afterwards) and what went wrong. ``on_cell(i,
    session, outcome)`` is called after each cell (the meta-test uses it to probe exercises).
    """
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
            if outcome.status == "error":
                events.append(f"cell {i} raised {outcome.error}")
            elif outcome.status == "timeout":
                events.append(f"cell {i} {outcome.error}; it was interrupted")
                if not session.responsive():
                    events.append(f"cell {i} left the kernel unresponsive; it is skipped and the notebook re-run")
                    skip.add(i)
                    restart = True
            elif outcome.status == "dead":
                events.append(f"cell {i}: {outcome.error}; it is skipped and the notebook re-run")
                skip.add(i)
                restart = True
            if restart:
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
