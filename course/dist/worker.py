"""The rank side: the loop each rank process runs (start, join the group, run what it is sent)."""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import io
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

import torch
import torch.distributed as tdist

from .devices import dumps_on_cpu
from .pickling import loads
from .traffic import _GROUP_LABELS, instrument, reset_traffic, traffic

_HERE = os.path.dirname(os.path.abspath(__file__))
WHERE_SIGNAL = signal.SIGUSR1  # asks a rank to print its stack (see _worker_main)


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
            data = dumps_on_cpu(result)  # GPU tensors come back as CPU copies (see course.dist.devices)
        except Exception as error:  # noqa: BLE001
            raise TypeError(f"the function returned a {type(result).__name__}, which cannot be sent back "
                            f"({error}); return tensors, numbers, lists or dicts") from None
        return ("done", True, data, out.getvalue(), err.getvalue(), traffic().counts, time.perf_counter() - start,
                "")
    except BaseException as error:  # noqa: BLE001 - report everything, including SystemExit
        tb = error.__traceback__
        while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == _HERE:
            tb = tb.tb_next  # start the traceback at the learner's code (skip this package's frames)
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
    # SIGUSR1 prints this rank's Python stack to its log, even while it is blocked inside a collective
    # (faulthandler writes from C): the parent asks for it when a run hangs, to say where each rank waits.
    faulthandler.register(WHERE_SIGNAL, file=sys.__stderr__, all_threads=False)
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
