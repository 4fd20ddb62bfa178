"""Run a check's harness on the shared local ranks (notebooks 06-08).

A learner's exception on a rank becomes a readable check failure; a stub raising
NotImplementedError on the ranks reads as "not implemented yet", as it would in one process.
"""

from __future__ import annotations

from .. import dist
from .core import CheckFailed, observation

WORLD = 4  # ranks the distributed notebooks and their checks use


@observation
def on_ranks(fn, *args, world: int = WORLD, timeout: float = 30):
    """``dist.pool(world).run(fn, *args)``, with failures translated for the learner.

    An observation: when the grader's judge checks a submission, this runs in the submission's
    kernel (whose ranks hold the learner's code) and returns what the harness saw on each rank;
    the check compares that with its reference in the grader.
    """
    try:
        return dist.pool(world).run(fn, *args, timeout=timeout)
    except dist.RanksNotImplemented as error:  # a stub: "not implemented yet: Exercise n.k: ..."
        raise NotImplementedError(error.first_error.split(": ", 1)[-1]) from None
    except dist.RankFailed as error:
        raise CheckFailed(f"on the ranks your code failed:\n{error}") from None
