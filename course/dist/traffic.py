"""Counting traffic: bytes each rank sends and receives, per operation and process group.

:func:`instrument` wraps the ``torch.distributed`` collectives on a rank; each call is counted
with the ring-algorithm volumes in the table of the :mod:`course.dist` docstring.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.distributed as tdist

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
