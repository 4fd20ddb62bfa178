"""Results over seeds: mean and spread, and conclusions no stronger than the spread allows.

A training run or a sampled outcome is one draw. Another seed, or the same seed on another
processor (a different SIMD width changes float summation order), gives another draw. So every
headline result of the course comes from a script run over several seeds, and the notebook says

* the mean and the spread (smallest and largest value over the seeds), and
* "A beats B" only when the seeds' ranges do not overlap: every seed of A above every seed of B.
  Otherwise the honest result is "within noise".

With 3 to 5 seeds, "ranges do not overlap" is a simple rule a reader can check by eye on the plot;
it is stricter than a t-test at small n, which is the side to err on.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Spread:
    """Summary of one quantity measured once per seed."""

    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single value
    low: float
    high: float
    n: int

    def format(self, digits: int = 3) -> str:
        """'0.62 (0.58-0.66, 3 seeds)': mean, then the range over the seeds."""
        return f"{self.mean:.{digits}g} ({self.low:.{digits}g}-{self.high:.{digits}g}, {self.n} seeds)"


def spread(values: Iterable[float]) -> Spread:
    """Mean, standard deviation, min and max of per-seed values (at least one, all finite)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread() needs at least one value (one per seed)")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"spread() got a value that is nan or inf: {values}")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Spread(statistics.fmean(values), std, min(values), max(values), len(values))


def separated(a: Sequence[float], b: Sequence[float]) -> int:
    """+1 when every value of ``a`` is above every value of ``b``, -1 when below, 0 when they overlap."""
    if not a or not b:
        raise ValueError("separated() needs at least one value on each side")
    if min(a) > max(b):
        return 1
    if max(a) < min(b):
        return -1
    return 0


def compare(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float]) -> str:
    """One sentence: which is higher beyond the seeds' spread, or 'within noise'."""
    sa, sb = spread(a), spread(b)
    side = separated(a, b)
    if side == 0:
        return f"{name_a} {sa.format()} vs {name_b} {sb.format()}: within noise (the seeds' ranges overlap)"
    high, low = (name_a, name_b) if side > 0 else (name_b, name_a)
    return (f"{name_a} {sa.format()} vs {name_b} {sb.format()}: {high} is higher on every seed "
            f"than {low} on any seed")


def by_group(rows: Iterable[dict], group: str | Sequence[str], value: str) -> dict:
    """``{group key: [value per row]}`` from CSV rows (one row per seed), in first-seen order."""
    keys = [group] if isinstance(group, str) else list(group)
    out: dict = {}
    for row in rows:
        key = row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)
        out.setdefault(key, []).append(float(row[value]))
    return out


def plot_band(ax, x: Sequence[float], runs: Sequence[Sequence[float]], *, label: str, color=None):
    """Plot the mean over runs (one run per seed, each aligned with ``x``) and a min-max band."""
    if not runs or any(len(r) != len(x) for r in runs):
        raise ValueError(f"plot_band needs runs of length {len(x)} (one per seed), got {[len(r) for r in runs]}")
    columns = list(zip(*runs))
    mean = [statistics.fmean(c) for c in columns]
    (line,) = ax.plot(x, mean, label=f"{label} (mean of {len(runs)} seeds)", color=color)
    ax.fill_between(x, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(), alpha=0.2,
                    linewidth=0)
    return line
