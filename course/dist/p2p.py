"""Is a pattern of point-to-point messages safe on NCCL? Record it on gloo, replay it under NCCL's rule.

Gloo buffers a send until its receive comes and matches messages by tag, so almost any order of
``send``/``recv``/``isend``/``irecv`` runs. NCCL guarantees neither: a send may wait on the GPU until
the peer posts the matching receive, operations run in the order they were posted, and tags are
ignored, so the k-th message from rank a to rank b is whatever b's k-th receive from a is. A pattern
that runs on gloo can hang on NCCL (issue 18: "isend, then a blocking recv with the same peer").

:func:`record` notes, on a rank, each point-to-point call as a *group*: one
``batch_isend_irecv`` is one group (NCCL runs its operations together), any other call a group of
one. :func:`replay` then plays every rank's groups under a strict model of NCCL: each rank runs
its groups one after another; a send and its receive complete together, once both of their groups
are running; a group ends when all its operations completed. If the replay cannot finish, the
pattern may deadlock on NCCL however well it ran on gloo. The model is stricter than NCCL, which
keeps a separate queue per pair of ranks for single sends and receives and may buffer small messages;
a pattern it accepts does not rely on either.
"""

from __future__ import annotations

import contextlib

import torch.distributed as tdist
import torch.distributed.distributed_c10d as c10d

_NAMES = ("isend", "irecv", "send", "recv")


@contextlib.contextmanager
def record():
    """On a rank: ``with dist.p2p.record() as groups: ...`` lists this rank's point-to-point groups,
    each a list of ``(kind, peer, numel)`` with kind ``'send'`` or ``'recv'`` and ``peer`` a global rank."""
    groups: list[list[tuple]] = []
    batching: list[bool] = []
    originals = {name: getattr(tdist, name) for name in _NAMES + ("batch_isend_irecv",)}
    c10d_originals = {name: getattr(c10d, name) for name in ("isend", "irecv")}

    def single(name):
        original = originals[name]
        kind = "send" if name in ("send", "isend") else "recv"

        def recorded(tensor, *args, **kwargs):
            if not batching:  # inside batch_isend_irecv the batch is the group
                peer = args[0] if args else kwargs.get("dst" if kind == "send" else "src")
                groups.append([(kind, peer, tensor.numel())])
            return original(tensor, *args, **kwargs)

        recorded.__name__ = name
        return recorded

    wrapped = {name: single(name) for name in _NAMES}

    def batch(ops):
        groups.append([("send" if op.op in (wrapped["isend"], originals["isend"], c10d_originals["isend"])
                        else "recv", op.peer, op.tensor.numel()) for op in ops])
        batching.append(True)
        try:
            return originals["batch_isend_irecv"](ops)
        finally:
            batching.pop()

    try:
        for name, fn in wrapped.items():
            setattr(tdist, name, fn)
        for name in ("isend", "irecv"):  # P2POp accepts only the functions it finds here
            setattr(c10d, name, wrapped[name])
        tdist.batch_isend_irecv = batch
        yield groups
    finally:
        for name, fn in originals.items():
            setattr(tdist, name, fn)
        for name, fn in c10d_originals.items():
            setattr(c10d, name, fn)


def replay(groups: dict[int, list], world: int) -> str | None:
    """Replay each rank's groups (``{rank: [[(kind, peer, numel), ...], ...]}``) under the strict model
    of NCCL above; None when every rank finishes, else what went wrong."""
    sends: dict[tuple, list] = {}
    recvs: dict[tuple, list] = {}
    for rank in range(world):
        for g, group in enumerate(groups.get(rank, [])):
            for o, (kind, peer, numel) in enumerate(group):
                if kind not in ("send", "recv"):
                    raise ValueError(f"kind must be 'send' or 'recv', got {kind!r}")
                key = (rank, peer) if kind == "send" else (peer, rank)
                (sends if kind == "send" else recvs).setdefault(key, []).append((rank, g, o, numel))
    partner = {}
    for key in sorted(set(sends) | set(recvs)):
        s, r = sends.get(key, []), recvs.get(key, [])
        if len(s) != len(r):
            return f"{len(s)} sends from rank {key[0]} to rank {key[1]} but {len(r)} receives"
        for a, b in zip(s, r):  # NCCL ignores tags: the k-th send meets the k-th receive
            if a[3] != b[3]:
                return f"a send of {a[3]} elements from rank {key[0]} meets a receive of {b[3]} on rank {key[1]}"
            partner[a[:3]], partner[b[:3]] = b[:3], a[:3]
    position = {rank: 0 for rank in range(world)}
    done: set = set()
    while not all(position[r] >= len(groups.get(r, [])) for r in range(world)):
        progressed = False
        for rank in range(world):
            mine = groups.get(rank, [])
            g = position[rank]
            if g >= len(mine):
                continue
            for o in range(len(mine[g])):
                other = partner[(rank, g, o)]
                if position[other[0]] == other[1]:  # both groups are running: the pair completes
                    done.update({(rank, g, o), other})
            if all((rank, g, o) in done for o in range(len(mine[g]))):
                position[rank] += 1
                progressed = True
        if not progressed:
            waiting = {r: groups[r][position[r]] for r in range(world) if position[r] < len(groups.get(r, []))}
            return ("every rank waits: " + "; ".join(
                f"rank {r} in " + " + ".join(f"{k} {'to' if k == 'send' else 'from'} rank {p}" for k, p, _ in g)
                for r, g in waiting.items()))
    return None
