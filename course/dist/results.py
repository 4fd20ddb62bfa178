"""What a run returns (:class:`RunResult`) and how it fails (:class:`RankFailed`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .traffic import Traffic

class RankFailed(RuntimeError):
    """One or more ranks raised, died, or ran out of time. The message has their tracebacks.

    Attributes: ``failures`` ({rank: traceback text}), ``stdout`` (list per rank of what it
    printed before), ``kind`` ('raised', 'died' or 'timeout').
    """

    def __init__(self, message: str, *, failures: dict[int, str], stdout: list[str], kind: str,
                 exception_types: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.failures, self.stdout, self.kind = failures, stdout, kind
        self.exception_types = exception_types or {}


    @property
    def first_error(self) -> str:
        """The last line of the lowest failing rank's traceback, e.g. ``'ValueError: bad shape'``."""
        if not self.failures:
            return ""
        lines = self.failures[min(self.failures)].strip().splitlines()
        return lines[-1] if lines else ""


class RanksNotImplemented(RankFailed, NotImplementedError):
    """Every rank that failed raised NotImplementedError (an exercise stub): 'not done yet'."""


@dataclass
class RunResult:
    """What :meth:`Ranks.run` returns: one entry per rank, in rank order."""

    results: list
    stdout: list[str]
    stderr: list[str]
    traffic: list[Traffic]
    seconds: float
    backend: str

    @property
    def world_size(self) -> int:
        return len(self.results)

    def show(self, ranks: Iterable[int] | None = None) -> None:
        """Print what each rank printed, each line prefixed with ``[rank r]``."""
        for r in (range(self.world_size) if ranks is None else ranks):
            for line in self.stdout[r].splitlines():
                print(f"[rank {r}] {line}")

    def __repr__(self) -> str:
        return (f"RunResult({self.world_size} ranks, {self.backend}, {self.seconds:.2f} s, "
                f"results={[type(r).__name__ for r in self.results]})")


def make_failure(kind: str, failures: dict[int, str], exception_types: dict[int, str], stdout: list[str],
                 keep: bool = False, stopped: Iterable[int] = (), *, waiting: dict[int, str] | None = None,
                 finished: Iterable[int] = (), limit: float | None = None, torchrun: bool = False) -> RankFailed:
    """The :class:`RankFailed` for a run: which ranks failed and how, where the others were waiting,
    then each one's traceback.

    ``stopped``: ranks stopped while still running after others failed; ``waiting``: ``{rank: 'waiting in
    torch.distributed.all_reduce, called at ...'}``; ``finished``: ranks that had returned (timeouts);
    ``keep``: every rank answered, so the processes stay; ``torchrun``: nothing is rebuilt or restarted.
    """
    stopped, waiting, finished = sorted(stopped), waiting or {}, sorted(finished)
    culprits = [r for r in sorted(failures) if r not in stopped]
    if kind == "timeout":
        header = f"rank(s) {culprits} did not finish within the {limit:g} s time limit" if limit else \
            f"rank(s) {culprits} ran out of time"
        if finished:
            header += f" (rank(s) {finished} had finished)"
    else:
        header = f"rank(s) {culprits} " + {"raised": "raised an exception", "died": "died"}[kind]
    if stopped:
        header += f"; rank(s) {stopped} were still running and were stopped"
    if waiting:
        header += "".join(f"\n  rank {r} was {waiting[r]}" for r in sorted(waiting))
        if any("torch.distributed" in w for w in waiting.values()):
            header += ("\n  hint: ranks waiting in different collectives, or in one whose tensors differ in "
                       "size between ranks, never meet: every rank must make the same calls, in the same "
                       "order, with the same sizes (Ranks(..., debug=True) makes torch name a mismatch at once)")
    if torchrun:
        header += "\nEvery rank raises this error; torchrun's group is unchanged."
    else:
        header += "\nThe group was " + ("rebuilt" if keep else "stopped and the next run starts it again") + "."
    lines, shown = [header], set()
    for rank in culprits + stopped:
        text = failures[rank].rstrip()
        if text in shown:
            lines.append(f"--- rank {rank}: the same as above")
            continue
        shown.add(text)
        lines.append(f"--- rank {rank}:\n{text}")
        if stdout[rank].strip() and rank == culprits[0]:
            lines.append(f"--- rank {rank} printed:\n{stdout[rank].rstrip()[-2000:]}")
    cls = RanksNotImplemented if exception_types and set(exception_types.values()) == {
        "NotImplementedError"} else RankFailed
    return cls("\n".join(lines), failures=failures, stdout=stdout, kind=kind, exception_types=exception_types)
