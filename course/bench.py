"""Timing that is correct on either device, tidy result tables, sweep plots, and measured CSVs.

Rules this module follows so learners don't have to remember them:

* warm up first (the first call pays for compilation, caching and allocation);
* synchronise the GPU before reading a clock (kernel launches are asynchronous);
* report the median of repeats, with the 20th and 80th percentiles as spread;
* on a GPU, let ``triton.testing.do_bench`` time with CUDA events and a flushed L2 cache (where
  Triton is missing, CUDA events and the same flush directly).

A *table* here is a list of dicts with the same keys ("tidy" rows): easy to print, plot and save.
"""

from __future__ import annotations

import csv
import datetime as _dt
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from . import runtime


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms (p20 {self.p20_ms:.3f}, p80 {self.p80_ms:.3f}, n={self.repeats})"


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def time_fn(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10,
            device: torch.device | str | None = None) -> Timing:
    """Time ``fn()`` (no arguments) and return its median and spread in milliseconds.

    On CUDA this uses ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs) with
    ``repeats`` as the number of measured calls (without Triton, the same CUDA events by hand); on
    CPU, ``time.perf_counter`` around each call.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable with no arguments, got {type(fn).__name__}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    device = torch.device(device) if device is not None else runtime.device()
    if device.type == "cuda" and runtime.triton_available():
        import triton.testing

        times = triton.testing.do_bench(fn, warmup=warmup, rep=repeats, return_mode="all")
        times = sorted(float(t) for t in times)
    elif device.type == "cuda":  # CUDA torch without Triton (native Windows): the same events, by hand
        times = sorted(_cuda_event_times(fn, warmup, repeats, device))
    else:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times))


def _cuda_event_times(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``repeats`` calls, timed with CUDA events, L2 flushed before each call.

    What ``triton.testing.do_bench`` does, for CUDA machines without Triton: the flush (writing a
    256 MB buffer, larger than any GPU's L2) runs before the start event, so it is not timed.
    """
    with torch.cuda.device(device):
        flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]


def sweep(fns: dict[str, Callable[[Any], Callable[[], Any]]], xs: Iterable[Any], *, x_name: str = "x",
          flops: Callable[[Any], float] | None = None, warmup: int = 2, repeats: int = 10,
          progress: bool = True) -> list[dict]:
    """Time several implementations over a range of sizes.

    ``fns`` maps a name to a *factory*: given ``x`` it prepares inputs and returns the no-argument
    callable to time (so input creation is not timed). ``flops(x)``, if given, adds a TFLOP/s column.
    Returns tidy rows ``{name, x_name, ms, p20_ms, p80_ms[, tflops]}``.
    """
    if not fns:
        raise ValueError("fns must name at least one implementation to time")
    xs = list(xs)
    rows = []
    pairs = [(name, x) for x in xs for name in fns]
    for name, x in runtime.progress(pairs, desc="benchmark", disable=not progress or runtime.headless()):
        timing = time_fn(fns[name](x), warmup=warmup, repeats=repeats)
        row = {"name": name, x_name: x, "ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms}
        if flops is not None:
            row["tflops"] = flops(x) / (timing.median_ms * 1e-3) / 1e12
        rows.append(row)
    return rows


def format_table(rows: list[dict], columns: Sequence[str] | None = None, *, floatfmt: str = ".3g") -> str:
    """Rows of dicts as an aligned plain-text table (what a notebook prints and nbval compares)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise KeyError(f"columns {missing} are not in the rows (they have {list(rows[0])})")

    def cell(value: Any) -> str:
        return format(value, floatfmt) if isinstance(value, float) else str(value)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def plot_sweep(rows: list[dict], *, x: str, y: str, hue: str = "name", xlabel: str | None = None,
               ylabel: str | None = None, title: str | None = None, logx: bool = False,
               logy: bool = False, ax=None, note: str | None = None):
    """One line per ``hue`` value of ``y`` against ``x``. Labels are required reading: give units."""
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    for key in (x, y, hue):
        if key not in rows[0]:
            raise KeyError(f"{key!r} is not a column of the rows (they have {list(rows[0])})")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r[hue] for r in rows):
        points = sorted((r[x], r[y]) for r in rows if r[hue] == label)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=str(label))
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if note:  # where and when the numbers were measured
        ax.text(0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, alpha=0.7)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


# --- measured results as CSV ----------------------------------------------------------------


#: Where scripts save measured results (CSV with a header saying where and when) for notebooks to read.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def environment_tags() -> dict[str, str]:
    """Where and when something was measured: device, processor and its numeric settings (SIMD
    level, threads), library versions, date (UTC)."""
    import platform

    tags = {
        "device": runtime.device_name(),
        **runtime.numeric_config(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
    }
    if runtime.triton_available():
        import triton

        tags["triton"] = triton.__version__
    else:  # macOS, Windows (Triton ships for Linux only): import course's stand-in is no Triton
        tags["triton"] = "absent"
    if torch.version.cuda:
        tags["cuda"] = torch.version.cuda
    return tags


def save_csv(rows: list[dict], path: str | Path, *, tags: dict[str, str] | None = None) -> Path:
    """Write rows to CSV with ``# key: value`` header lines saying where and when they were measured."""
    if not rows:
        raise ValueError("rows is empty: refusing to write a CSV with no measurements")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = {**environment_tags(), **(tags or {})}
    with path.open("w", newline="") as f:
        for key, value in tags.items():
            f.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_csv(path: str | Path) -> tuple[list[dict], dict[str, str]]:
    """Read a CSV written by :func:`save_csv`: ``(rows, tags)``; numbers come back as numbers."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no measured results at {path}")
    tags, lines = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ":" in line and not lines:
            key, _, value = line[2:].partition(":")
            tags[key.strip()] = value.strip()
        else:
            lines.append(line)
    rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(lines)]
    return rows, tags


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def measured_note(tags: dict[str, str]) -> str:
    """The label a plot of saved results carries: 'measured on <device>, <processor>, <SIMD>, <n> threads, <date>'."""
    where = tags.get("device", "?")
    details = [tags[k] for k in ("cpu_model", "torch_cpu_capability") if tags.get(k)]
    if tags.get("threads"):
        details.append(f"{tags['threads']} thread{'s' if tags['threads'] != '1' else ''}")
    if details and not where.startswith(("NVIDIA", "Tesla")):
        where += ", " + ", ".join(details)
    return f"measured on {where}, {tags.get('date', '?')}, torch {tags.get('torch', '?')}"
