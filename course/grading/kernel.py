"""Run untrusted notebook cells in a fresh Jupyter kernel, with time limits, surviving anything.

:class:`KernelSession` executes one cell at a time and turns every way a cell can go wrong into
an :class:`Outcome`: it raised, it ran past its time limit (the kernel is interrupted; if it
does not answer, it is killed), or the kernel died (``os._exit``, a segfault, out of memory).
:func:`execute_cells` builds on it: a cell that kills or wedges the kernel is skipped and the
notebook re-run from a fresh kernel, so one bad cell costs only its own exercise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

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


class KernelSession:
    """One kernel in a working directory; run cells with a time limit each."""

    def __init__(self, cwd: str, *, env: dict[str, str] | None = None, startup_timeout: float = 60) -> None:
        self.cwd, self.env, self.startup_timeout = cwd, env or kernel_env(), startup_timeout
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
                  max_restarts: int = 3, env: dict[str, str] | None = None, on_cell=None) -> Execution:
    """Run ``sources`` in order in a fresh kernel, recovering from cells that kill or wedge it.

    Returns the live session (for running checks afterwards) and what went wrong. ``on_cell(i,
    session, outcome)`` is called after each cell (the meta-test uses it to probe exercises).
    """
    start = time.perf_counter()
    skip: set[int] = set()
    restarts: list[str] = []  # why earlier attempts were abandoned
    for _attempt in range(max_restarts + 1):
        session = KernelSession(cwd, env=env)
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
