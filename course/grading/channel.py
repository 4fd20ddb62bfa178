"""One end of the judge <-> kernel connection: requests, replies, and the objects each side lends.

Both ends are a :class:`Channel`. A request is sent and answered in turn, and while an end waits
for its answer it serves the requests that arrive meanwhile (the learner's code calling back into a
model the check lent it, say), so calls may nest either way. The judge's end is ``guarded``: the
kernel may call what the judge lent it and read its public attributes, nothing else (no private
or dunder attributes, no assignments, no methods that would change a reference model), and the
judge never unpickles. The kernel's end serves anything: it is the learner's process anyway.
"""

from __future__ import annotations

import importlib
import itertools
import time

import torch

from . import remote
from .remote import Codec, Remote, RemoteError, Timeout, WireError

#: Methods the kernel may not call on an object the judge lent it: they would change a reference.
GUARDED_METHODS = frozenset({
    "load_state_dict", "apply", "to", "half", "float", "double", "bfloat16", "cuda", "cpu", "type",
    "requires_grad_", "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_buffer", "register_parameter", "add_module", "register_module", "set_state", "manual_seed",
    "seed", "share_memory", "zero_grad", "set_submodule", "set_extra_state"})
MAX_EXPORTS = 1_000_000


class Channel:
    def __init__(self, sock, *, guarded: bool, allow_pickle: bool, namespace: dict | None = None):
        self.sock, self.guarded, self.allow_pickle, self.namespace = sock, guarded, allow_pickle, namespace
        self.codec = Codec(self)
        self.exports: dict[int, object] = {}
        self.export_ids: dict[int, int] = {}  # id(object) -> its id on the wire (exports keep it alive)
        self.proxies: dict[int, Remote] = {}  # the other side's objects, one proxy each
        self.ids = itertools.count(1)
        self.requests = itertools.count(1)
        self.outstanding: list[int] = []  # ids of requests this end is waiting for, outermost first
        self.deadline: float | None = None  # judge: when the current check's time is up
        self.closed = False
        self.traffic = [0, 0]  # requests sent, requests served (for timing reports)
        self.ops: dict[str, int] = {}  # requests sent, by kind

    # --- lending objects --------------------------------------------------------------------------

    def export(self, value) -> dict:
        if len(self.exports) >= MAX_EXPORTS:
            raise WireError("too many objects lent across the connection")
        ident = self.export_ids.get(id(value))  # one id per object, so `a is b` survives the trip
        if ident is None:
            ident = next(self.ids)
            self.exports[ident] = value
            self.export_ids[id(value)] = ident
        kind = type(value)
        return {"t": "obj", "id": ident, "type": f"{kind.__module__}.{kind.__qualname__}"[:200],
                "call": callable(value)}

    def exported(self, ident):
        if type(ident) is not int or ident not in self.exports:
            raise WireError(f"a reference to an object that was never lent ({str(ident)[:30]})")
        return self.exports[ident]

    def make_exception(self, node: dict) -> BaseException:
        name = str(node.get("type", "Exception"))[:100]
        message = str(node.get("msg", ""))[:4000]
        stub = node.get("stub")
        if isinstance(stub, str):
            return NotImplementedError(stub[:300])
        base = remote.import_exception_class(str(node.get("module", ""))[:100], name)
        error = None
        if base is not None and base is not StopIteration:
            short = name.split(".")[-1]
            for bases in ((base, RemoteError), (base,)):  # OSError's layout admits no second base
                try:
                    cls = type(short, bases, {"__str__": lambda self: message, "__module__": base.__module__})
                    error = cls.__new__(cls)
                    BaseException.__init__(error, message)
                    break
                except TypeError:
                    error = None
        elif base is StopIteration:
            return StopIteration(message)
        if error is None:
            cls = type(name.split(".")[-1], (RemoteError,), {"__str__": lambda self: message})
            error = cls(message)
        error.remote_where = str(node.get("where", ""))[:2000]
        return error

    @staticmethod
    def encode_exception(error: BaseException) -> dict:
        from course.checks.core import not_implemented_inside

        kind = type(error)
        try:
            message = str(error)[:4000]
        except BaseException:  # noqa: BLE001 - a __str__ that fails
            message = "<unprintable>"
        try:
            stub = not_implemented_inside(error)
        except BaseException:  # noqa: BLE001
            stub = None
        return {"t": "exc", "type": kind.__qualname__[:100], "module": str(kind.__module__)[:100], "msg": message,
                "where": remote.describe_frames(error), "stub": stub}

    # --- sending and receiving --------------------------------------------------------------------

    def _send(self, header: dict, values: list, *, back=None, unchanged=None) -> None:
        blobs: list[bytes] = []
        header = dict(header)
        header["values"] = [self.codec.encode(v, blobs, back=back, unchanged=unchanged) for v in values]
        remote.send_message(self.sock, header, blobs)

    def _send_error(self, ident, error: BaseException) -> None:
        remote.send_message(self.sock, {"op": "reply", "id": ident, "ok": False,
                                        "values": [self.encode_exception(error), None]}, [])

    def request(self, op: str, target, *args, **kwargs):
        """Ask the other side to do ``op`` on ``target`` (a proxy, or None); wait for the answer."""
        if self.closed:
            raise WireError("the connection to the kernel is closed")
        ident = next(self.requests)
        self.traffic[0] += 1
        self.ops[op] = self.ops.get(op, 0) + 1
        blobs: list[bytes] = []
        sent: list = []
        payload = [self.codec.encode(target, blobs), self.codec.encode(args, blobs, record=sent),
                   self.codec.encode(kwargs, blobs, record=sent)]
        remote.send_message(self.sock, {"op": op, "id": ident, "values": payload}, blobs)
        return self._wait(ident, sent)

    def _wait(self, ident: int, sent: list):
        """Serve the other side until the answer to request ``ident`` arrives; return its value."""
        self.outstanding.append(ident)
        try:
            while True:
                header, blobs = self._receive()
                if header.get("op") != "reply":
                    self._serve(header, blobs)
                elif header.get("id") == ident:  # other ids: late answers to abandoned requests
                    break
        except Timeout:
            raise  # still outstanding: recover() waits for this answer
        except BaseException:
            self.outstanding.remove(ident)
            raise
        self.outstanding.remove(ident)
        return self._reply_value(header, blobs, sent)

    def observe(self, function, args: tuple, kwargs: dict):
        """Run a course observation helper in the kernel on ``args`` (pickled; proxies by reference)."""
        blob = remote.pickle_for_kernel((args, kwargs), self)
        ident = next(self.requests)
        remote.send_message(self.sock, {"op": "observe", "id": ident, "module": function.__module__,
                                        "name": function.__qualname__, "values": [{"t": "pickle", "b": 0}]},
                            [blob])
        return self._wait(ident, [])

    def _receive(self):
        try:
            return remote.receive_message(self.sock, self.deadline)
        except (OSError, WireError) as error:
            self.closed = True
            raise WireError(str(error) or "the kernel stopped answering") from None

    def _reply_value(self, header: dict, blobs: list[bytes], sent: list):
        values = header.get("values")
        if type(values) is not list or len(values) != 2:
            raise WireError("a malformed reply")
        if header.get("ok") is not True:
            error = self.codec.decode(values[0], blobs, allow_pickle=False)
            raise error if isinstance(error, BaseException) else WireError("a malformed error reply")
        if values[1] is not None:  # write-back first: the result may be one of the arguments
            self.codec.decode(values[1], blobs, allow_pickle=False, originals=sent)
        return self.codec.decode(values[0], blobs, allow_pickle=self.allow_pickle, originals=sent)

    # --- serving the other side's requests --------------------------------------------------------

    def serve_forever(self) -> None:
        """The kernel's loop: answer the judge until it says goodbye or goes away."""
        while not self.closed:
            try:
                header, blobs = self._receive()
            except KeyboardInterrupt:
                continue
            except WireError:
                return
            if header.get("op") == "bye":
                return
            self._serve(header, blobs)

    def _serve(self, header: dict, blobs: list[bytes]) -> None:
        ident = header.get("id")
        self.traffic[1] += 1
        key = "served:" + str(header.get("op"))[:20]
        self.ops[key] = self.ops.get(key, 0) + 1
        received: list = []
        snapshots: dict[int, tuple] = {}
        try:
            values = header.get("values")
            if type(values) is not list:
                raise WireError("a malformed request")
            decoded = [self.codec.decode(v, blobs, allow_pickle=self.allow_pickle, record=received) for v in values]
            for i, obj in enumerate(received):
                if isinstance(obj, torch.Tensor):
                    snapshots[i] = (obj._version, obj.detach().clone())
            result = self._do(str(header.get("op")), header, decoded)
        except (Timeout, WireError):
            raise
        except BaseException as error:  # noqa: BLE001 - whatever the code did, answer the request
            if self.guarded and isinstance(error, KeyboardInterrupt):
                raise
            self._send_error(ident, error)
            return
        back_index = {id(obj): i for i, obj in enumerate(received) if obj is not None}

        def unchanged(t):
            i = back_index.get(id(t))
            if i not in snapshots:
                return False
            version, copy = snapshots[i]
            return t._version == version and t.shape == copy.shape and torch.equal(t.detach(), copy)

        back = tuple(decoded[1:3]) if received and header.get("op") == "call" else None
        try:
            self._send({"op": "reply", "id": ident, "ok": True}, [result, back], back=back_index, unchanged=unchanged)
        except (Timeout, OSError):
            raise
        except BaseException as error:  # noqa: BLE001 - a result that cannot be sent
            self._send_error(ident, TypeError(f"the value could not be sent to the grader: {error}"))

    def _do(self, op: str, header: dict, decoded: list):
        if op == "observe":
            return self._observe(header, decoded[0])
        target, args, kwargs = decoded
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise WireError("malformed arguments")
        if op == "lookup":
            if self.namespace is None:
                raise PermissionError("the grader has no names to look up")
            name = args[0]
            if name not in self.namespace:
                raise NameError(f"name {name!r} is not defined")
            return self.namespace[name]
        if op == "getattr":
            name = str(args[0])
            if self.guarded and (name.startswith("_") or name in GUARDED_METHODS):
                raise PermissionError(f"your code may not use .{name} of an object the grader lent it")
            return getattr(target, name)
        if op == "call":
            if self.guarded and not callable(target):
                raise TypeError("not callable")
            return target(*args, **kwargs)
        if self.guarded and op in ("setattr", "setitem"):
            raise PermissionError("your code may not change an object the grader lent it")
        simple = {"setattr": lambda: setattr(target, str(args[0]), args[1]),
                  "getitem": lambda: target[args[0]], "setitem": lambda: target.__setitem__(args[0], args[1]),
                  "len": lambda: len(target), "bool": lambda: bool(target), "float": lambda: float(target),
                  "int": lambda: int(target), "index": lambda: target.__index__(),
                  "contains": lambda: args[0] in target, "iter": lambda: iter(target),
                  "next": lambda: next(target), "repr": lambda: repr(target)[:300],
                  "isinstance": lambda: isinstance(args[0], target), "issubclass": lambda: issubclass(args[0], target)}
        if op not in simple:
            raise WireError(f"unknown request {op[:30]!r}")
        result = simple[op]()
        return None if op in ("setattr", "setitem") else result

    def _observe(self, header: dict, payload):
        if self.guarded:
            raise PermissionError("observations run in the kernel, not in the grader")
        module = importlib.import_module(str(header.get("module")))
        function = module
        for part in str(header.get("name")).split("."):
            function = getattr(function, part)
        args, kwargs = payload
        return getattr(function, "observed", function)(*args, **kwargs)

    # --- ending and recovering --------------------------------------------------------------------

    def recover(self, interrupt, tries: int = 3, wait: float = 5.0) -> bool:
        """After a timeout: interrupt the kernel until it answers the abandoned outermost request."""
        if not self.outstanding or self.closed:
            return not self.closed
        target = self.outstanding[0]
        self.outstanding.clear()
        for _ in range(tries):
            interrupt()
            self.deadline = time.monotonic() + wait
            try:
                while True:
                    header, blobs = self._receive()
                    if header.get("op") == "reply" and header.get("id") == target:
                        return True
                    if header.get("op") != "reply":
                        self._send_error(header.get("id"), TimeoutError("the check's time is up"))
            except Timeout:
                continue
            except WireError:
                return False
            finally:
                self.deadline = None
        return False

    def close(self) -> None:
        if not self.closed:
            try:
                remote.send_message(self.sock, {"op": "bye", "id": 0, "values": []}, [])
            except OSError:
                pass
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
