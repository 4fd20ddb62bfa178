"""The wire between the grader's judge (trusted) and the agent in a submission's kernel (untrusted).

Both ends speak the same protocol over one local socket: length-framed messages whose header is
JSON and whose bulk data (tensor bytes) follows as raw blobs. :func:`decode` rebuilds only plain
values from a message: ``None``, bools, numbers, strings, bytes, lists, tuples, dicts, sets,
torch/numpy arrays (dtype + shape + bytes, dtypes from a fixed list), ``torch.dtype``,
``torch.Size``, ``torch.device`` and torch generators (their state). Any other object stays on the
side that made it and the other side gets a :class:`Remote` proxy: calling it, reading an
attribute, indexing or iterating it is a request over the socket. Nothing that arrives from the
kernel is ever unpickled: the judge decodes with ``allow_pickle=False``. Only the judge may send
pickles (to ship an observation helper's arguments into the kernel, which harms nobody but the
kernel).

A call sends its arguments by value; when it returns, the callee sends back what changed in the
mutable arguments (tensors written in place, lists and dicts edited) and the caller applies it to
its own objects, so code that fills an output buffer works across the wire.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import pathlib
import pickle
import socket
import struct
import time
import traceback

import torch

MAX_MESSAGE = 256 << 20  # bytes; a bigger message ends the connection
MAX_DEPTH = 64  # nesting of lists/dicts in one value
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)}
_NUMPY_KINDS = "biufc"  # bool, int, uint, float, complex: never object arrays


class WireError(Exception):
    """The other side broke the protocol, went away, or sent something that cannot be decoded."""


class Timeout(BaseException):
    """The judge's deadline passed while it waited for the kernel (BaseException: checks can't catch it)."""


class RemoteError(Exception):
    """An exception raised on the other side; ``remote_where`` holds its last frames as text."""

    remote_where = ""


# --- framing -------------------------------------------------------------------------------------


def send_message(sock: socket.socket, header: dict, blobs: list[bytes]) -> None:
    header = dict(header, blobs=[len(b) for b in blobs])
    head = json.dumps(header).encode()
    total = 4 + len(head) + sum(len(b) for b in blobs)
    if total > MAX_MESSAGE:
        raise WireError(f"a message of {total} bytes is over the {MAX_MESSAGE} byte limit")
    sock.sendall(struct.pack("!QI", total, len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def _read_exactly(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buffer = bytearray()
    while len(buffer) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            sock.settimeout(min(left, 1.0))
        try:
            chunk = sock.recv(min(n - len(buffer), 1 << 20))
        except socket.timeout:
            continue
        if not chunk:
            raise WireError("the other side closed the connection (did the kernel die?)")
        buffer += chunk
    return bytes(buffer)


def receive_message(sock: socket.socket, deadline: float | None = None) -> tuple[dict, list[bytes]]:
    total, head_len = struct.unpack("!QI", _read_exactly(sock, 12, deadline))
    if total > MAX_MESSAGE or head_len > total - 4:
        raise WireError(f"a message of {total} bytes is over the limit or malformed")
    try:
        header = json.loads(_read_exactly(sock, head_len, deadline))
        sizes = header.pop("blobs")
        if not isinstance(header, dict) or not all(isinstance(s, int) and s >= 0 for s in sizes):
            raise ValueError("bad header")
    except (ValueError, KeyError, TypeError, RecursionError, AttributeError) as error:
        raise WireError(f"undecodable message header: {error}") from None
    if 4 + head_len + sum(sizes) != total:
        raise WireError("message blob sizes do not add up")
    return header, [_read_exactly(sock, s, deadline) for s in sizes]


# --- values --------------------------------------------------------------------------------------


class Remote:
    """A proxy for an object that lives on the other side of a :class:`Channel`.

    Equality and hashing are by identity on purpose: ``got == want`` on a proxy never asks the
    kernel, so an object whose ``__eq__`` always says yes cannot pass a comparison in the judge.
    """

    __slots__ = ("_channel", "_id", "_type", "_callable")

    def __init__(self, channel, ident: int, type_name: str, is_callable: bool):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_id", ident)
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_callable", is_callable)

    def _ask(self, op, *args, **kwargs):
        return self._channel.request(op, self, *args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        self._ask("setattr", name, value)

    def __call__(self, *args, **kwargs):
        return self._ask("call", *args, **kwargs)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __setitem__(self, key, value):
        self._ask("setitem", key, value)

    def __len__(self):
        return _plain(self._ask("len"), int, "len()")

    def __bool__(self):
        return _plain(self._ask("bool"), bool, "bool()")

    def __float__(self):
        return float(_plain(self._ask("float"), (float, int), "float()"))

    def __int__(self):
        return _plain(self._ask("int"), int, "int()")

    def __index__(self):
        return _plain(self._ask("index"), int, "an index")

    def __contains__(self, item):
        return _plain(self._ask("contains", item), bool, "'in'")

    def __iter__(self):
        iterator = self._ask("iter")
        while True:
            try:
                yield iterator._ask("next") if isinstance(iterator, Remote) else next(iterator)
            except StopIteration:
                return

    def __next__(self):
        return self._ask("next")

    def __instancecheck__(self, value):  # isinstance(x, ProxyOfALearnerClass), asked where it lives
        return _plain(self._ask("isinstance", value), bool, "isinstance()")

    def __subclasscheck__(self, value):
        return _plain(self._ask("issubclass", value), bool, "issubclass()")

    def __eq__(self, other):
        return isinstance(other, Remote) and other._channel is self._channel and other._id == self._id

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((id(self._channel), self._id))

    def __repr__(self):
        try:
            text = self._ask("repr")
        except BaseException:  # noqa: BLE001 - a repr must not fail a message
            text = None
        return text[:300] if isinstance(text, str) else f"<{self._type} object>"

    def __str__(self):
        return self.__repr__()

    def __dir__(self):
        return []


def _plain(value, kinds, what):
    if type(value) not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise TypeError(f"{what} of a value from your code gave {type(value).__name__}, not a plain value")
    return value


def is_remote(value) -> bool:
    return type(value) is Remote


def type_name(value) -> str:
    """The class name of ``value``, or of the object a proxy stands for (as its side reported it)."""
    return value._type.rsplit(".", 1)[-1] if type(value) is Remote else type(value).__name__


def find_remote(*values):
    """The first :class:`Remote` among ``values`` (one level into lists, tuples and dicts), or None."""
    for value in values:
        if type(value) is Remote:
            return value
        if isinstance(value, (list, tuple)):
            found = find_remote(*value)
        elif isinstance(value, dict):
            found = find_remote(*value.values())
        else:
            continue
        if found is not None:
            return found
    return None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = torch.Tensor.detach(t).cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _build_tensor(node: dict, blob: bytes) -> torch.Tensor:
    dtype = _DTYPES.get(node.get("dtype"))
    shape = node.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise WireError(f"bad tensor description {str(node)[:200]}")
    numel = 1
    for s in shape:
        numel *= s
    if numel * torch.empty((), dtype=dtype).element_size() != len(blob):
        raise WireError("tensor bytes do not match its shape and dtype")
    t = torch.frombuffer(bytearray(blob), dtype=dtype).reshape(shape) if numel else torch.empty(shape, dtype=dtype)
    device = node.get("device", "cpu")
    if device != "cpu" and isinstance(device, str) and device.split(":")[0] in ("cuda", "mps"):
        try:
            t = t.to(device)
        except (RuntimeError, AssertionError):
            pass
    if node.get("param"):
        t = torch.nn.Parameter(t, requires_grad=bool(node.get("grad")))
    elif node.get("grad") and (t.is_floating_point() or t.is_complex()):
        t.requires_grad_()
    return t


class Codec:
    """Turns values into (JSON tree, blobs) and back, for one direction of one :class:`Channel`."""

    def __init__(self, channel):
        self.channel = channel

    # encoding ---------------------------------------------------------------------------------

    def encode(self, value, blobs: list[bytes], record: list | None = None, back: dict | None = None,
               unchanged=None, depth: int = 0):
        """``record`` collects the mutable values in encoding order (for write-back); ``back`` maps
        id() of the callee's original arguments to their index, ``unchanged`` says whether one is."""
        if depth > MAX_DEPTH:
            raise WireError(f"a value nested deeper than {MAX_DEPTH} levels")
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            return value if value == value and value not in (float("inf"), float("-inf")) else {"t": "float", "v": repr(value)}
        index = back.get(id(value)) if back else None

        def tag(node):
            if index is not None:
                node["i"] = index
            elif record is not None:
                record.append(value)
            return node

        def enc(v):
            return self.encode(v, blobs, record, back, unchanged, depth + 1)

        if isinstance(value, torch.Tensor) and value.layout == torch.strided and str(value.dtype).removeprefix("torch.") in _DTYPES:
            if index is not None and unchanged is not None and unchanged(value):
                return {"t": "same", "i": index}
            blobs.append(_tensor_bytes(value))
            return tag({"t": "tensor", "dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                        "b": len(blobs) - 1, "device": str(value.device), "grad": bool(value.requires_grad),
                        "param": isinstance(value, torch.nn.Parameter)})
        if kind is list:  # recorded before its items, as decode() records it
            node = tag({"t": "list"})
            node["v"] = [enc(v) for v in value]
            return node
        if isinstance(value, dict):  # OrderedDict (a state_dict) and other dicts arrive as plain dicts
            node = tag({"t": "dict"})
            node["k"], node["v"] = [enc(k) for k in value], [enc(v) for v in value.values()]
            return node
        if kind is tuple:
            return {"t": "tuple", "v": [enc(v) for v in value]}
        if kind in (set, frozenset):
            return {"t": kind.__name__, "v": [enc(v) for v in value]}
        if kind in (bytes, bytearray):
            blobs.append(bytes(value))
            return {"t": "bytes", "b": len(blobs) - 1}
        if kind is complex:
            return {"t": "complex", "v": [repr(value.real), repr(value.imag)]}
        if kind is slice:
            return {"t": "slice", "v": [enc(value.start), enc(value.stop), enc(value.step)]}
        if value is Ellipsis:
            return {"t": "ellipsis"}
        if isinstance(value, pathlib.PurePath):  # both ends share the file system
            return {"t": "path", "v": str(value)}
        if kind is torch.dtype:
            return {"t": "dtype", "v": str(value).removeprefix("torch.")}
        if kind is torch.Size:
            return {"t": "size", "v": [int(s) for s in value]}
        if kind is torch.device:
            return {"t": "device", "v": str(value)}
        if kind is torch.Generator and value.device.type == "cpu":
            blobs.append(_tensor_bytes(value.get_state()))
            return tag({"t": "generator", "b": len(blobs) - 1})
        if kind.__module__ == "numpy":
            import numpy as np

            if isinstance(value, np.ndarray) and value.dtype.kind in _NUMPY_KINDS:
                blobs.append(np.ascontiguousarray(value).tobytes())
                return tag({"t": "ndarray", "dtype": value.dtype.str, "shape": list(value.shape), "b": len(blobs) - 1})
            if isinstance(value, np.generic) and value.dtype.kind in _NUMPY_KINDS:
                return enc(value.item())
        if _course_dataclass(kind):  # a course record (a chat Message, a ChatResult ...): by value
            return {"t": "record", "module": kind.__module__, "name": kind.__qualname__,
                    "v": enc({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})}
        if kind is Remote:
            if value._channel is not self.channel:
                raise WireError("a proxy from another connection")
            return {"t": "ref", "id": value._id}
        return self.channel.export(value)

    # decoding ---------------------------------------------------------------------------------

    def decode(self, node, blobs: list[bytes], *, allow_pickle: bool, record: list | None = None,
               originals: list | None = None, depth: int = 0):
        """``record`` collects decoded mutable values in order; ``originals`` (a caller applying
        write-back) maps "i" indices back to the caller's own objects, which are updated in place."""
        if depth > MAX_DEPTH:
            raise WireError(f"a value nested deeper than {MAX_DEPTH} levels")
        if node is None or type(node) in (bool, int, str):
            return node
        if type(node) is float:
            return node
        if type(node) is not dict or not isinstance(node.get("t"), str):
            raise WireError(f"undecodable value {str(node)[:100]}")

        def dec(v):
            return self.decode(v, blobs, allow_pickle=allow_pickle, record=record, originals=originals,
                               depth=depth + 1)

        def blob(n):
            i = n.get("b")
            if type(i) is not int or not 0 <= i < len(blobs):
                raise WireError("a value refers to a missing blob")
            return blobs[i]

        def original(kind):
            i = node.get("i")
            if originals is not None and type(i) is int and 0 <= i < len(originals) and isinstance(originals[i], kind):
                return originals[i]
            return None

        t = node["t"]
        if t == "float":
            return float(_str(node.get("v")))
        if t == "same":
            found = original(torch.Tensor)
            if found is None:
                raise WireError("write-back names an argument that was not sent")
            return found
        if t == "tensor":
            value = _build_tensor(node, blob(node))
            mine = original(torch.Tensor)
            if mine is not None and mine.shape == value.shape and mine.dtype == value.dtype:
                with torch.no_grad():
                    mine.copy_(value)
                value = mine
            if record is not None:
                record.append(value)
            return value
        if t == "list":
            mine = original(list)
            if record is not None and mine is None:
                record.append(None)  # placeholder keeps indices aligned; replaced below
                slot = len(record) - 1
            items = [dec(v) for v in _list(node.get("v"))]
            if mine is not None:
                mine[:] = items
                return mine
            if record is not None:
                record[slot] = items
            return items
        if t == "dict":
            mine = original(dict)
            if record is not None and mine is None:
                record.append(None)
                slot = len(record) - 1
            keys, values = _list(node.get("k")), _list(node.get("v"))
            if len(keys) != len(values):
                raise WireError("a dict with unequal keys and values")
            try:  # keys first, then values: the order encode() recorded them in
                decoded_keys = [dec(k) for k in keys]
                items = dict(zip(decoded_keys, [dec(v) for v in values]))
            except TypeError as error:  # an unhashable key
                raise WireError(f"bad dict key: {error}") from None
            if mine is not None:
                mine.clear()
                mine.update(items)
                return mine
            if record is not None:
                record[slot] = items
            return items
        if t == "tuple":
            return tuple(dec(v) for v in _list(node.get("v")))
        if t in ("set", "frozenset"):
            try:
                return (set if t == "set" else frozenset)(dec(v) for v in _list(node.get("v")))
            except TypeError as error:
                raise WireError(f"bad set item: {error}") from None
        if t == "bytes":
            return blob(node)
        if t == "complex":
            re_, im = _list(node.get("v"))[:2]
            return complex(float(_str(re_)), float(_str(im)))
        if t == "slice":
            return slice(*(dec(v) for v in _list(node.get("v"))[:3]))
        if t == "path":
            return pathlib.Path(_str(node.get("v")))
        if t == "ellipsis":
            return Ellipsis
        if t == "dtype":
            dtype = _DTYPES.get(node.get("v"))
            if dtype is None:
                raise WireError(f"unknown dtype {str(node.get('v'))[:50]}")
            return dtype
        if t == "size":
            return torch.Size([_int(s) for s in _list(node.get("v"))])
        if t == "device":
            try:
                return torch.device(_str(node.get("v"))[:30])
            except RuntimeError as error:
                raise WireError(f"bad device: {error}") from None
        if t == "generator":
            state = torch.frombuffer(bytearray(blob(node)), dtype=torch.uint8) if blob(node) else None
            mine = original(torch.Generator)
            generator = mine if mine is not None else torch.Generator()
            try:
                generator.set_state(state.clone())
            except (RuntimeError, AttributeError) as error:
                raise WireError(f"bad generator state: {error}") from None
            if record is not None and mine is None:
                record.append(generator)
            return generator
        if t == "ndarray":
            import numpy as np

            try:
                dtype = np.dtype(_str(node.get("dtype"))[:10])
                if dtype.kind not in _NUMPY_KINDS:
                    raise TypeError("not a numeric dtype")
                shape = tuple(_int(s) for s in _list(node.get("shape")))
                array = np.frombuffer(blob(node), dtype=dtype).reshape(shape).copy()
            except (TypeError, ValueError) as error:
                raise WireError(f"bad array: {error}") from None
            mine = original(np.ndarray)  # write-back: the callee changed an array it was given
            if mine is not None and mine.shape == array.shape and mine.dtype == array.dtype:
                mine[...] = array
                array = mine
            if record is not None:
                record.append(array)
            return array
        if t == "record":
            cls = _import_course_class(_str(node.get("module")), _str(node.get("name")))
            values = dec(node.get("v"))
            names = [f.name for f in dataclasses.fields(cls)] if cls is not None else None
            if names is None or not isinstance(values, dict) or sorted(values) != sorted(names):
                raise WireError(f"not a course record: {str(node.get('name'))[:80]}")
            record = object.__new__(cls)  # no __init__ runs: the fields are set as they came
            for name in names:
                object.__setattr__(record, name, values[name])
            return record
        if t == "ref":
            return self.channel.exported(node.get("id"))
        if t == "obj":
            ident = node.get("id")
            if type(ident) is not int:
                raise WireError("a proxy without an id")
            proxy = self.channel.proxies.get(ident)
            if proxy is None:
                proxy = Remote(self.channel, ident, _str(node.get("type", "object"))[:200], bool(node.get("call")))
                self.channel.proxies[ident] = proxy
            return proxy
        if t == "exc":
            return self.channel.make_exception(node)
        if t == "pickle":
            if not allow_pickle:
                raise WireError("refusing to unpickle a value from the other side")
            return _KernelUnpickler(io.BytesIO(blob(node)), self.channel).load()
        raise WireError(f"unknown value tag {t[:30]!r}")


def _course_dataclass(kind) -> bool:
    return (dataclasses.is_dataclass(kind) and isinstance(kind, type) and kind.__module__.startswith("course.")
            and not hasattr(kind, "__slots__"))


def _import_course_class(module: str, qualname: str):
    """A dataclass of the course named by the other side, or None (nothing else is imported)."""
    if not module.startswith("course.") or "__" in qualname:
        return None
    obj = _lookup(module, qualname)
    return obj if _course_dataclass(obj) else None


def _lookup(module: str, qualname: str):
    """``module.qualname`` imported here, or None; callers allow only modules they trust."""
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj


def _list(v):
    if type(v) is not list:
        raise WireError("expected a list in a message")
    return v


def _str(v):
    if type(v) is not str:
        raise WireError("expected a string in a message")
    return v


def _int(v):
    if type(v) is not int:
        raise WireError("expected an integer in a message")
    return v


class _JudgePickler(pickle.Pickler):
    """Pickles an observation's arguments for the kernel; proxies travel as references."""

    def __init__(self, file, channel):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.channel = channel

    def persistent_id(self, obj):
        if type(obj) is Remote:
            return ("ref", obj._id)
        return None


class _KernelUnpickler(pickle.Unpickler):
    def __init__(self, file, channel):
        super().__init__(file)
        self.channel = channel

    def persistent_load(self, pid):
        return self.channel.exported(pid[1])


def pickle_for_kernel(value, channel) -> bytes:
    buffer = io.BytesIO()
    _JudgePickler(buffer, channel).dump(value)
    return buffer.getvalue()


def describe_frames(error: BaseException, frames: int = 3) -> str:
    tb = traceback.extract_tb(error.__traceback__)[-frames:]
    return "".join(f"  at {f.name} (line {f.lineno}): {(f.line or '').strip()}\n" for f in tb).rstrip()


def import_exception_class(module: str, qualname: str):
    """An exception class the judge may raise in the kernel's name (builtins, torch, course, triton)."""
    if not (module == "builtins" or module.split(".")[0] in ("course", "torch", "triton")):
        return None
    obj = _lookup(module, qualname)
    return obj if isinstance(obj, type) and issubclass(obj, Exception) else None
