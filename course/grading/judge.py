"""The judge: run every exercise's check in the grader's own process against the learner's code
in the submission's kernel, and decide each verdict here.

The check cell's source comes from the solution notebook and runs in this process with ``check``
bound to the check module imported here; each learner name it mentions is a :class:`Remote` proxy
for the object in the kernel. The check makes its inputs here, the learner's code runs in the
kernel (through the agent, :mod:`course.grading.agent`), and only plain values come back (see
:mod:`course.grading.remote`), so the comparison with the reference and the verdict
(``core.RESULTS`` of this process) are out of the submission's reach: whatever it patched in its
kernel (the course, torch, builtins) stays there.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time

import torch

from course.checks import core

from .channel import Channel
from .remote import Timeout, WireError

CONNECT_TIMEOUT = 60.0  # seconds the kernel has to connect once the agent cell started
#: Says, in every report line's place of origin, where the verdict was made.
JUDGED_HERE = "judged in the grader's process"


class _LearnerNames(dict):
    """The check cell's local names: each one is looked up in the kernel (``check`` never is)."""

    def __init__(self, channel: Channel, reserved: set[str]):
        super().__init__()
        self.channel, self.reserved = channel, reserved

    def __missing__(self, name):
        raise KeyError(name)

    def __getitem__(self, name):
        if name in self.reserved or (name.startswith("__") and name.endswith("__")):
            raise KeyError(name)
        try:
            return self.channel.request("lookup", None, name)
        except NameError:
            raise KeyError(name) from None


def _python(source: str) -> str:
    """Cell source as plain Python (IPython magics such as %time translated, here in the judge)."""
    try:
        compile(source, "<check cell>", "exec")
        return source
    except SyntaxError:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)


def run_check(source: str, channel: Channel, module, timeout: float, interrupt) -> dict:
    """Run one check cell here; return ``{passed, message, seconds}``. Never raises."""
    start = time.perf_counter()

    def fail(message):
        return {"passed": False, "message": message, "seconds": time.perf_counter() - start}

    if channel.closed:
        return fail("the kernel stopped answering before this check (did an earlier check crash it?)")
    scope = {"check": module, "__builtins__": builtins, "__name__": "__check__"}
    names = _LearnerNames(channel, set(scope))
    before, traffic = len(core.RESULTS), sum(channel.traffic)
    channel.deadline = time.monotonic() + timeout
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            exec(compile(_python(source), "<check cell>", "exec"), scope, names)
    except Timeout:
        channel.deadline = None
        recovered = channel.recover(interrupt)
        return fail(f"the check did not finish within {timeout:g} s (an infinite loop, or far too slow?)"
                    + ("" if recovered else "; the kernel then stopped answering"))
    except NameError as error:
        return fail(f"{error}: the check needs this name; was it deleted, renamed, or its cell not run?")
    except WireError as error:
        return fail(f"the kernel stopped answering during the check ({error})")
    except BaseException as error:  # noqa: BLE001 - a check must never take the grader down
        return fail(f"running the check raised {type(error).__name__}: {error}")
    finally:
        channel.deadline = None
    new = core.RESULTS[before:]
    del core.RESULTS[before:]
    if channel.closed:
        return fail("the kernel died or stopped answering during the check")
    if not new:
        return fail("the check cell ran but no check reported a result")
    failed = [r for r in new if not r.passed]
    message = "\n".join(r.message for r in failed) if failed else "; ".join(r.message for r in new if r.message)
    return {"passed": not failed, "message": message, "seconds": time.perf_counter() - start,
            "requests": sum(channel.traffic) - traffic}


class Judge:
    """Serve one grading: listen, let the kernel's agent connect, run the checks, say goodbye."""

    def __init__(self, check_module: str, exercises: list[dict], check_timeout: float, kernel_pid: int | None):
        self.module = importlib.import_module(check_module)
        self.exercises, self.check_timeout, self.kernel_pid = exercises, check_timeout, kernel_pid
        self.folder = tempfile.mkdtemp(prefix="course-judge-")
        self.path = os.path.join(self.folder, "judge.sock")
        self.token = secrets.token_hex(16)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.results: dict[str, dict] = {}
        self.problem = ""
        self.cell_finished = threading.Event()
        self.healthy = True

    def agent_code(self) -> str:
        return f"import course.grading.agent as _course_agent\n_course_agent.serve({self.path!r}, {self.token!r})"

    def _interrupt(self) -> None:
        if self.kernel_pid:
            with contextlib.suppress(OSError):
                os.kill(self.kernel_pid, signal.SIGINT)

    def _accept(self):
        deadline = time.monotonic() + CONNECT_TIMEOUT
        self.listener.settimeout(0.2)
        while time.monotonic() < deadline and not self.cell_finished.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(5)
            try:
                token = conn.recv(len(self.token))
            except OSError:
                token = b""
            if token == self.token.encode():
                return conn
            conn.close()  # not our agent: someone else found the socket
        return None

    def run(self) -> None:
        """The judge thread: everything that decides a verdict happens here."""
        try:
            conn = self._accept()
            if conn is None:
                self.problem = "the grader's agent never connected from the kernel (was course.grading replaced?)"
                self.healthy = False
                return
            channel = Channel(conn, guarded=True, allow_pickle=False)
            for exercise in self.exercises:
                self.results[exercise["id"]] = run_check(exercise["check_source"], channel, self.module,
                                                         self.check_timeout, self._interrupt)
            self.healthy = not channel.closed
            self.ops = channel.ops
            channel.close()
        except BaseException as error:  # noqa: BLE001 - report, never crash the grader
            self.problem = f"the judge failed: {type(error).__name__}: {error}"
            self.healthy = False
        finally:
            # a wedged or dishonest agent cell must not hold the grader: it has 10 s to end
            if (not self.healthy or not self.cell_finished.wait(10)) and self.kernel_pid:
                with contextlib.suppress(OSError):
                    os.kill(self.kernel_pid, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def judge_checks(session, check_module: str, exercises: list[dict], check_timeout: float) -> tuple[dict, str]:
    """Run the agent cell in ``session`` and the judge beside it; return ``(results by id, problem)``."""
    pid = None
    with contextlib.suppress(AttributeError):
        pid = session.client.km.provisioner.pid
    judge = Judge(check_module, exercises, check_timeout, pid)
    thread = threading.Thread(target=judge.run, name="course-judge", daemon=True)
    # One thread for torch here, as in the kernel: the judge's references are small, and idle
    # worker threads spinning beside the kernel would slow every answer it waits for.
    threads, salt = torch.get_num_threads(), core.SALT
    torch.set_num_threads(1)
    core.SALT = secrets.randbelow(1 << 30)  # inputs made with core.grading_seed change every grading
    thread.start()
    try:
        outcome = session.run(judge.agent_code(), check_timeout * max(1, len(exercises)) + 60)
        judge.cell_finished.set()
        thread.join(timeout=30)
    finally:
        judge.close()
        torch.set_num_threads(threads)
        core.SALT = salt
    problem = judge.problem
    if problem and outcome.status != "ok":
        problem += f" (the agent's cell: {outcome.status}: {outcome.error[:300]})"
    if not problem and outcome.status == "dead":
        problem = "the kernel died while it was being checked"
    return judge.results, problem
