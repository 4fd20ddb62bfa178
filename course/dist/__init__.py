"""Run a function on N ranks of ``torch.distributed`` from a notebook, and count what they send.

Three things, used by the ZeRO, Megatron-LM and PaRO notebooks:

**Ranks.** ``ranks = dist.pool(4)`` starts four local processes (``gloo`` on the CPU; ``nccl``
when there is one GPU per rank) that join one process group, and keeps them for the whole
notebook, because starting a process that imports torch costs seconds. ``out = ranks.run(fn, x)``
calls ``fn(x)`` on every rank and returns each rank's return value, printed output and traffic::

    import torch, torch.distributed as tdist
    from course import dist

    def total(x):
        t = torch.tensor([x * (tdist.get_rank() + 1.0)])
        tdist.all_reduce(t)          # ordinary torch.distributed calls
        return t.item()

    out = dist.pool(4).run(total, 1.0)
    out.results      # [10.0, 10.0, 10.0, 10.0]

**Sending your function to the ranks.** The ranks are separate Python processes, so ``fn`` and
its arguments travel there pickled. Ordinary pickle sends a function *by name* ("import
``total`` from module ``__main__``"), which fails for anything defined in a notebook cell: the
rank has no such module. So a function (or class) defined in the notebook travels *by value*:
its compiled code (``marshal``), its default arguments and closure, and the globals it reads:
a module by its name (the rank imports it), another notebook function or class by value again,
anything else (tensors, numbers, configs) pickled. Functions from an importable module
(``torch``, ``course``) still travel by name. Keep to that and everything a notebook defines
runs on the ranks, including a learner's exercise function that a check hands over; a global
that cannot be pickled (an open file, a lock) is refused *before* any rank starts, with its name.

**Failures end the group, never hang.** A rank that raises reports its traceback; if the others
finished too, the group is rebuilt (fast) and the processes reused, and if they are stuck
waiting in a collective for the rank that raised, they are stopped after ``grace`` seconds. A rank
that dies (``os._exit``, a segfault, SIGKILL) or a run past ``timeout`` stops every rank at once.
Either way :class:`RankFailed` is raised with what each rank printed, and the next ``run``
starts fresh processes. For each rank still running when the group is stopped the message says
where it was: ``waiting in torch.distributed.all_reduce, called at <cell>, line 7 in f`` (the
rank prints its stack on SIGUSR1, even from inside a collective). ``Ranks(4, debug=True)`` sets
``TORCH_DISTRIBUTED_DEBUG=DETAIL`` on the ranks, so that a collective called with different shapes
or in a different order raises at once on every rank, naming the difference; it doubles the time
of a small gloo all_reduce (9.7 to 19.4 ms on 4 ranks on 2 shared cores), so it is off by default.

**Devices.** NCCL moves only GPU tensors, gloo moves CPU tensors: code that runs on ranks makes
its tensors with ``device=dist.device()`` (``cuda:<local rank>`` on NCCL, else the CPU) and moves
models with ``.to(dist.device())``, so one cell runs on both; ``dist.synchronize()`` waits for the
GPU before a clock is read (a no-op on the CPU). What a rank returns comes back to the notebook on
the CPU (GPU tensors are copied when the result is pickled), where the single-process references live.

**Traffic.** On every rank the ``torch.distributed`` collectives are wrapped (``all_reduce``,
``reduce_scatter*``, ``all_gather*``, ``broadcast``, ``reduce``, ``send``/``recv``/``isend``/
``irecv``) to count the bytes the rank sends and receives, per process group. Point-to-point
counts are exact. A collective's count is what the rank sends under the bandwidth-optimal ring
algorithm, computed from the real tensors of each call (n ranks, S bytes):

=====================================  ========================  ==========================
operation                              sent per rank             received per rank
=====================================  ========================  ==========================
all_reduce (S = tensor)                2 (n-1)/n S               2 (n-1)/n S
reduce_scatter (S = one output shard)  (n-1) S                   (n-1) S
all_gather (S = one input shard)       (n-1) S                   (n-1) S
broadcast (pipelined chain from src)   S, except the chain's end S, except src
reduce (S = tensor)                    (n-1)/n S                 (n-1)/n S
=====================================  ========================  ==========================

Gloo and NCCL pick their own algorithms (trees, halving-doubling), which move about the same
volume; the counts are the textbook volumes that the papers' 2Psi and 3Psi refer to, measured on
the calls the code actually made (padding and extra calls included). ``dist.measure()`` counts a
region of code on a rank; :func:`new_group` names a group so that counts read ``intra0`` rather
than ``ranks(0,1)``.

**torchrun.** Under ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) no
processes are started: ``pool()`` joins the group torchrun made and ``run`` calls ``fn`` in this
process, then gathers every rank's result, so a script written against this module scales to
more machines unchanged::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 script.py

**Where each part lives** (each file reads in one sitting):

- :mod:`course.dist.ranks`: :class:`Ranks`, :func:`pool`, running a function and reporting failures;
- :mod:`course.dist.processes`: starting, watching and stopping the local rank processes;
- :mod:`course.dist.worker`: the loop each rank process runs;
- :mod:`course.dist.pickling`: sending notebook functions and classes to the ranks by value;
- :mod:`course.dist.traffic`: counting the bytes of each collective, per process group;
- :mod:`course.dist.results`: :class:`RunResult`, :class:`RankFailed` and their messages;
- :mod:`course.dist.torchrun`: joining torchrun's group instead of starting processes;
- :mod:`course.dist.devices`: :func:`device` and :func:`synchronize`, where a rank's tensors live;
- :mod:`course.dist.p2p`: recording a rank's point-to-point calls and replaying them under NCCL's rule.
"""

from __future__ import annotations

import torch.distributed as tdist  # noqa: F401 - kept for code that reads course.dist.tdist

from . import p2p  # noqa: F401 - dist.p2p.record / dist.p2p.replay: is a message pattern NCCL-safe?
from .devices import device, local_rank, synchronize
from .pickling import _NAMESPACES, _Pickler, dumps, loads  # noqa: F401
from .processes import _choose_backend, _loopback_interface, _positive  # noqa: F401
from .ranks import (DEFAULT_GRACE, DEFAULT_START_TIMEOUT, DEFAULT_TIMEOUT, _LIVE, _POOLS,  # noqa: F401
                    Ranks, pool, shutdown)
from .results import RankFailed, RanksNotImplemented, RunResult  # noqa: F401
from .torchrun import torchrun_command, torchrun_world_size, under_torchrun  # noqa: F401
from .traffic import (_GROUP_LABELS, _RUN_TRAFFIC, Traffic, group_label, instrument, measure,  # noqa: F401
                      name_group, new_group, reset_traffic, traffic)
from .worker import _worker_main  # noqa: F401


__all__ = ["Ranks", "RunResult", "Traffic", "RankFailed", "RanksNotImplemented", "pool", "shutdown",
           "under_torchrun", "torchrun_world_size", "new_group", "name_group", "group_label", "measure", "traffic", "reset_traffic",
           "instrument", "dumps", "loads", "torchrun_command", "device", "local_rank", "synchronize"]
