"""Benchmark helpers for FlashAttention, shared by notebook 02 and ``scripts/bench_flash_attention.py``.

Split from :mod:`course.flash_attention` (which re-exports every name here): random inputs, the
implementations compared (ours, the standard algorithm, torch SDPA's flash backend), one timed case
as a tidy row, the memory autograd saves, the issue's performance bar and the plot.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import runtime
from .flash_attention import attention_flops, flash_attention, naive_attention

#: Where ``scripts/bench_flash_attention.py`` writes the GPU sweep (read by the notebook).
RESULTS_CSV = Path(__file__).resolve().parent / "results" / "flash_attention_gpu.csv"
#: The issue's performance bar: bf16, batch*heads = 32, N = 4096, d = 128, as a fraction of SDPA.
PERF_BAR_SHAPE = {"dtype": "bfloat16", "batch_heads": 32, "n": 4096, "d": 128}
PERF_BAR = {"fwd": 0.8, "fwd_bwd": 0.6}

def make_qkv(batch_heads: int, n: int, d: int, dtype=torch.float16, device=None, *, seed: int = 0,
             requires_grad: bool = False):
    """Random q, k, v of shape (1, batch_heads, n, d) (std 1), seeded."""
    for name, value in (("batch_heads", batch_heads), ("n", n), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    device = runtime.device() if device is None else torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn((1, batch_heads, n, d), generator=gen, device=device, dtype=dtype)
               .requires_grad_(requires_grad) for _ in range(3))
    return q, k, v


def sdpa_flash(q, k, v, causal: bool = False):
    """torch SDPA restricted to its FlashAttention backend (raises if that backend cannot run)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


IMPLEMENTATIONS = {
    "triton (ours)": lambda q, k, v, causal: flash_attention(q, k, v, causal),
    "naive pytorch": lambda q, k, v, causal: naive_attention(q, k, v, causal),
    "torch sdpa (flash)": sdpa_flash,
}


def benchmark_case(impl: str, batch_heads: int, n: int, d: int, *, causal: bool, dtype, mode: str,
                   repeats: int = 20, device=None) -> dict:
    """Time one implementation at one shape on the current device; return a tidy row.

    ``mode`` is ``"fwd"`` or ``"fwd_bwd"``. The row has ms, TFLOP/s (by :func:`attention_flops`) and,
    on CUDA, the peak memory allocated during the call above what the inputs hold. A shape that runs
    out of memory gives a row with ``ms = nan`` and ``note = "out of memory"``.
    """
    from . import bench

    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {list(IMPLEMENTATIONS)}, got {impl!r}")
    if mode not in ("fwd", "fwd_bwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwd_bwd', got {mode!r}")
    fn = IMPLEMENTATIONS[impl]
    device = runtime.device() if device is None else torch.device(device)
    q, k, v = make_qkv(batch_heads, n, d, dtype, device, requires_grad=mode == "fwd_bwd")
    do = torch.randn_like(q)

    def run():
        out = fn(q, k, v, causal)
        if mode == "fwd_bwd":
            out.backward(do)
            q.grad = k.grad = v.grad = None
        return out

    nan = float("nan")
    row = {"impl": impl, "mode": mode, "dtype": str(dtype).replace("torch.", ""), "causal": causal,
           "batch_heads": batch_heads, "n": n, "d": d, "ms": nan, "tflops": nan, "peak_mem_mb": nan, "note": ""}
    cuda = device.type == "cuda"
    try:
        run()  # compile / autotune outside the timed and the measured region
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            row["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        timing = bench.time_fn(run, warmup=2, repeats=repeats, device=device)
    except torch.OutOfMemoryError:
        row["note"] = "out of memory"
        return row
    finally:
        if cuda:
            torch.cuda.empty_cache()
    row["ms"] = timing.median_ms
    row["tflops"] = attention_flops(batch_heads, n, n, d, causal=causal, mode=mode) / (timing.median_ms * 1e-3) / 1e12
    return row


def saved_tensor_bytes(fn, *args, **kwargs) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn(*args, **kwargs)`` runs.

    This is the memory a training step keeps alive between forward and backward: O(N^2) for the
    standard algorithm (it saves P), O(N d) for FlashAttention (Q, K, V, O and the lse).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), t.device.type)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(storages.values())


def perf_bar_summary(rows: list[dict]) -> list[dict]:
    """Our TFLOP/s over SDPA's at :data:`PERF_BAR_SHAPE`, per (causal, mode), against :data:`PERF_BAR`."""
    if not isinstance(rows, list):
        raise TypeError(f"rows must be a list of dicts (a benchmark table), got {type(rows).__name__}")
    shape = PERF_BAR_SHAPE
    summary = []
    for causal in (False, True):
        for mode, bar in PERF_BAR.items():
            found = {r["impl"]: r for r in rows if r.get("mode") == mode and str(r.get("causal")) == str(causal)
                     and r.get("dtype") == shape["dtype"] and r.get("batch_heads") == shape["batch_heads"]
                     and r.get("n") == shape["n"] and r.get("d") == shape["d"]}
            ours, ref = found.get("triton (ours)"), found.get("torch sdpa (flash)")
            if ours is None or ref is None:
                continue
            ratio = ours["tflops"] / ref["tflops"] if ref["tflops"] else float("nan")
            summary.append({"causal": causal, "mode": mode, "ours_tflops": ours["tflops"],
                            "sdpa_tflops": ref["tflops"], "ratio": ratio, "bar": bar, "met": bool(ratio >= bar)})
    return summary


def plot_benchmark(rows: list[dict], note: str, *, dtype: str = "bfloat16", d: int = 128):
    """TFLOP/s (top) and peak memory (bottom) against N, one column per (mode, causal)."""
    import matplotlib.pyplot as plt

    from . import bench

    picked = [r for r in rows if r.get("dtype") == dtype and r.get("d") == d]
    if not picked:
        raise ValueError(f"no rows with dtype={dtype!r} and d={d} to plot")
    panels = [(mode, causal) for mode in ("fwd", "fwd_bwd") for causal in (False, True)]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for col, (mode, causal) in enumerate(panels):
        sub = [r for r in picked if r["mode"] == mode and str(r["causal"]) == str(causal)
               and isinstance(r.get("tflops"), float) and math.isfinite(r["tflops"])]
        if not sub:
            axes[0][col].set_axis_off()
            axes[1][col].set_axis_off()
            continue
        title = f"{mode}, {'causal' if causal else 'non-causal'}, {dtype}, d={d}"
        bench.plot_sweep(sub, x="n", y="tflops", hue="impl", xlabel="sequence length N",
                         ylabel="TFLOP/s", title=title, logx=True, ax=axes[0][col], note=note)
        mem = [r for r in sub if isinstance(r.get("peak_mem_mb"), float) and math.isfinite(r["peak_mem_mb"])]
        if mem:
            bench.plot_sweep(mem, x="n", y="peak_mem_mb", hue="impl", xlabel="sequence length N",
                             ylabel="peak memory above inputs (MiB)", logx=True, logy=True, ax=axes[1][col],
                             note=note)
        else:
            axes[1][col].set_axis_off()
    fig.tight_layout()
    return fig
