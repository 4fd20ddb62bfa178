"""The judge <-> kernel wire (course.grading.remote and .channel), without a kernel: two channels
over a socket pair, the "kernel" end served from a thread."""

from __future__ import annotations

import dataclasses
import pickle
import socket
import threading

import numpy as np
import pytest
import torch

from course.grading import remote
from course.grading.channel import Channel
from course.llm import Message


class Thing:
    def __init__(self):
        self.x = 3

    def add(self, a, b):
        return a + b


class AlwaysEqual:
    def __eq__(self, other):
        return True


def fill(out):
    out[:] = 7.0
    return None


def append(items):
    items.append(len(items))


@pytest.fixture
def wire():
    judge_end, kernel_end = socket.socketpair()
    names = {"Thing": Thing, "fill": fill, "append": append, "same": lambda v: v, "anything": AlwaysEqual(),
             "message": Message("user", "hi"), "boom": lambda: 1 / 0}
    kernel = Channel(kernel_end, guarded=False, allow_pickle=True, namespace=names)
    thread = threading.Thread(target=kernel.serve_forever, daemon=True)
    thread.start()
    judge = Channel(judge_end, guarded=True, allow_pickle=False)
    yield judge, lambda name: judge.request("lookup", None, name)
    judge.close()
    thread.join(5)


def test_plain_values_round_trip_and_objects_stay_behind_as_proxies(wire):
    _, get = wire
    same = get("same")
    for value in [None, True, 3, 2.5, float("inf"), "s", b"\x00b", [1, (2, 3)], {"a": {1, 2}}, torch.Size([2, 3]),
                  torch.float16, slice(1, None), 1 + 2j]:
        assert same(value) == value
    t = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(same(t), t)
    assert np.array_equal(same(np.arange(6).reshape(2, 3)), np.arange(6).reshape(2, 3))
    thing = get("Thing")()
    assert remote.is_remote(thing) and thing.x == 3 and thing.add(1, 2) == 3
    assert isinstance(thing, get("Thing")) and not isinstance(3, get("Thing"))
    assert get("message") == Message("user", "hi")  # a course record travels by value


def test_a_proxy_equals_only_itself(wire):
    _, get = wire
    anything = get("anything")
    assert anything != 1 and not (anything == 1) and 1 != anything
    assert anything == get("anything")  # the same kernel object, the same proxy


def test_arguments_written_in_place_come_back(wire):
    _, get = wire
    out = torch.zeros(4)
    get("fill")(out)
    assert torch.equal(out, torch.full((4,), 7.0))
    items = [0]
    get("append")(items)
    assert items == [0, 1]


def test_the_kernels_exceptions_arrive_as_their_own_type(wire):
    _, get = wire
    with pytest.raises(ZeroDivisionError):
        get("boom")()
    with pytest.raises(NameError):
        get("no_such_name")


def test_the_judge_refuses_pickles_and_object_arrays():
    judge_end, kernel_end = socket.socketpair()
    judge = Channel(judge_end, guarded=True, allow_pickle=False)
    blob = pickle.dumps(Thing())
    with pytest.raises(remote.WireError, match="unpickle"):
        judge.codec.decode({"t": "pickle", "b": 0}, [blob], allow_pickle=False)
    with pytest.raises(remote.WireError):
        judge.codec.decode({"t": "ndarray", "dtype": "|O", "shape": [1], "b": 0}, [b"\x00" * 8], allow_pickle=False)
    with pytest.raises(remote.WireError):
        judge.codec.decode({"t": "tensor", "dtype": "float32", "shape": [1000], "b": 0}, [b"\x00" * 4],
                           allow_pickle=False)
    with pytest.raises(remote.WireError):
        judge.codec.decode({"t": "record", "module": "os", "name": "system", "v": {"t": "dict", "k": [], "v": []}},
                           [], allow_pickle=False)
    judge_end.close(), kernel_end.close()


def test_the_kernel_may_not_reach_into_what_the_judge_lent_it():
    judge_end, kernel_end = socket.socketpair()
    model = torch.nn.Linear(2, 2)
    judge = Channel(judge_end, guarded=True, allow_pickle=False)
    kernel = Channel(kernel_end, guarded=False, allow_pickle=True)
    node = judge.export(model)
    proxy = kernel.codec.decode(node, [], allow_pickle=True)
    for attempt in (lambda: getattr(proxy, "_parameters"), lambda: proxy.load_state_dict({}),
                    lambda: setattr(proxy, "weight", None)):
        thread = threading.Thread(target=lambda: judge._serve(*remote.receive_message(judge_end)), daemon=True)
        thread.start()
        with pytest.raises(PermissionError):
            attempt()
        thread.join(5)
    assert dataclasses.is_dataclass(Message)
    judge_end.close(), kernel_end.close()


def test_numpy_arrays_written_in_place_come_back(wire):
    _, get = wire
    q = np.zeros((2, 2))
    get("fill")(q)
    assert (q == 7.0).all()
