"""GPU sweep for notebook 02: our Triton FlashAttention vs naive PyTorch vs torch SDPA (flash backend).

    python scripts/bench_flash_attention.py                  # the full sweep -> course/results/flash_attention_gpu.csv
    python scripts/bench_flash_attention.py --quick          # only the performance-bar shape (prints, writes nothing)
    python scripts/bench_flash_attention.py --dtype bfloat16 --append   # part of the sweep, merged into the CSV
    python scripts/bench_flash_attention.py --ladder         # the ladder's rungs -> course/results/flash_ladder_gpu.csv

The sweep: N = 512 .. 16384, d = 64 and 128, causal and not, fp16 and bf16, forward and
forward+backward, batch*heads = 32, for ``course.flash_attention.IMPLEMENTATIONS`` (the timing code is
``course.flash_attention.benchmark_case``, the one the notebook uses). Before timing anything it checks
our kernel against SDPA at a ragged shape and stops if they disagree: numbers from a wrong kernel are
not saved. At the end it prints the performance-bar shape (bf16, batch*heads = 32, N = 4096, d = 128)
as a fraction of SDPA's TFLOP/s. With ``--ladder`` it times instead each rung of
``course.flash_ladder`` (the learner's kernel, then one optimisation of the reference at a time) at
``flash_ladder.LADDER_SHAPE``, after checking each rung against SDPA. Needs a CUDA GPU; refuses to
run on the CPU interpreter.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import course  # noqa: F401  (first: picks the device, configures Triton)
from course import bench, runtime
from course import flash_attention as fa

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
KEY = ("impl", "mode", "dtype", "causal", "batch_heads", "n", "d")


def correctness(dtypes, head_dims) -> bool:
    """Our forward and gradients against SDPA's flash backend at a ragged shape, per dtype and d."""
    ok = True
    for dtype in dtypes:
        for d in head_dims:
            for causal in (False, True):
                q, k, v = fa.make_qkv(4, 1000, d, dtype, "cuda", seed=1, requires_grad=True)
                do = torch.randn_like(q)
                ours = fa.flash_attention(q, k, v, causal)
                ours.backward(do)
                g_ours = [t.grad.clone() for t in (q, k, v)]
                for t in (q, k, v):
                    t.grad = None
                ref = fa.sdpa_flash(q, k, v, causal)
                ref.backward(do)
                errors = [(ours - ref).abs().max().item()] + [(a - t.grad).abs().max().item()
                                                              for a, t in zip(g_ours, (q, k, v))]
                # bf16 has an 8-bit mantissa: two correct kernels that round P and dS at different
                # points differ by a few 1e-2 on O(1) gradients; a real bug is off by O(1).
                tol = 6e-2 if dtype == torch.bfloat16 else 1e-2
                good = all(e < tol for e in errors)
                ok &= good
                print(f"check {str(dtype)[6:]:>8} d={d:<3} causal={causal!s:<5}: max |ours - sdpa| O {errors[0]:.2e}, "
                      f"dQ {errors[1]:.2e}, dK {errors[2]:.2e}, dV {errors[3]:.2e} -> {'ok' if good else 'MISMATCH'}")
    return ok


def ladder(repeats: int, out: str | None) -> int:
    """Check every rung against SDPA at a ragged shape, then time each at the ladder's shape."""
    from course import flash_ladder

    shape = flash_ladder.LADDER_SHAPE
    dtype = DTYPES[shape["dtype"]]
    q, k, v = fa.make_qkv(4, 1000, shape["d"], dtype, "cuda", seed=1, requires_grad=True)
    do = torch.randn_like(q)
    ref = fa.sdpa_flash(q, k, v, shape["causal"])
    ref.backward(do)
    want = [ref] + [t.grad for t in (q, k, v)]
    ok = True
    with torch.no_grad():
        for rung in flash_ladder.RUNGS:
            got = flash_ladder.run_rung(rung, q.detach(), k.detach(), v.detach(), causal=shape["causal"], do=do)
            got = [got] if rung.mode == "fwd" else list(got)
            errors = [(a.float() - b.float()).abs().max().item() for a, b in zip(got, want)]
            good = all(e < 6e-2 for e in errors)  # bf16: as in correctness() above
            ok &= good
            print(f"check rung {rung.index} ({rung.step}): max |ours - sdpa| "
                  f"{', '.join(f'{e:.2e}' for e in errors)} -> {'ok' if good else 'MISMATCH'}", flush=True)
    if not ok:
        print("error: a rung disagrees with SDPA; not timing the ladder", file=sys.stderr)
        return 1
    rows = flash_ladder.measured_rows(repeats=repeats)
    print(bench.format_table(rows, ["rung", "step", "mode", "ms", "tflops"], floatfmt=".3g"))
    path = bench.save_csv(rows, out or flash_ladder.GPU_CSV, tags={
        "what": "scripts/bench_flash_attention.py --ladder: each rung of course.flash_ladder, ms median "
                "(triton do_bench), TFLOP/s (4*N^2*d per head forward, /2 causal, x3.5 forward+backward)"})
    print(f"wrote {len(rows)} rows to {path}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--d", type=int, nargs="+", default=[64, 128], choices=fa.SUPPORTED_HEAD_DIMS)
    p.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--causal", nargs="+", default=["false", "true"], choices=["false", "true"])
    p.add_argument("--mode", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    p.add_argument("--impl", nargs="+", default=list(fa.IMPLEMENTATIONS), choices=list(fa.IMPLEMENTATIONS))
    p.add_argument("--batch-heads", type=int, default=32)
    p.add_argument("--repeats", type=int, default=100, help="milliseconds of timed calls per case (do_bench rep)")
    p.add_argument("--quick", action="store_true", help="only the performance-bar shape; write no CSV")
    p.add_argument("--append", action="store_true", help="merge into the existing CSV instead of replacing it")
    p.add_argument("--ladder", action="store_true", help="time the ladder's rungs instead (course.flash_ladder)")
    p.add_argument("--out", default=None, help="the CSV to write (default: course/results/flash_attention_gpu.csv, "
                                              "or flash_ladder_gpu.csv with --ladder)")
    args = p.parse_args(argv)

    if not runtime.on_gpu():
        print("error: this benchmark needs a CUDA GPU; on the CPU, Triton runs in its interpreter and timings "
              "mean nothing", file=sys.stderr)
        return 2
    if args.batch_heads < 1 or any(n < 1 for n in args.n) or args.repeats < 1:
        p.error("--batch-heads, --n and --repeats must be positive")
    if args.ladder:
        print(f"device: {runtime.device_name()}, torch {torch.__version__}")
        return ladder(args.repeats, args.out)
    args.out = args.out or str(fa.RESULTS_CSV)
    shape = fa.PERF_BAR_SHAPE
    if args.quick:
        args.n, args.d, args.dtype, args.batch_heads = [shape["n"]], [shape["d"]], [shape["dtype"]], shape["batch_heads"]
        args.causal, args.mode = ["false", "true"], ["fwd", "fwd_bwd"]

    print(f"device: {runtime.device_name()}, torch {torch.__version__}")
    if not correctness([DTYPES[name] for name in args.dtype], args.d):
        print("error: our kernel disagrees with SDPA; not timing it", file=sys.stderr)
        return 1

    rows = []
    start = time.perf_counter()
    for dtype_name in args.dtype:
        for d in args.d:
            for causal in (c == "true" for c in args.causal):
                for mode in args.mode:
                    for n in args.n:
                        for impl in args.impl:
                            row = fa.benchmark_case(impl, args.batch_heads, n, d, causal=causal,
                                                    dtype=DTYPES[dtype_name], mode=mode, repeats=args.repeats)
                            rows.append(row)
                            print(f"{time.perf_counter() - start:7.1f}s  {impl:<19} {mode:<7} {dtype_name:<8} "
                                  f"causal={causal!s:<5} d={d:<3} N={n:<5}  {row['ms']:9.3f} ms  "
                                  f"{row['tflops']:7.1f} TFLOP/s  {row['peak_mem_mb']:9.1f} MiB {row['note']}",
                                  flush=True)

    summary = fa.perf_bar_summary(rows)
    if summary:
        print(f"\nperformance bar ({shape['dtype']}, batch*heads={shape['batch_heads']}, N={shape['n']}, "
              f"d={shape['d']}): our TFLOP/s as a fraction of torch SDPA's flash backend")
        print(bench.format_table(summary, floatfmt=".3g"))
    if args.quick:
        return 0
    if args.append and Path(args.out).exists():
        old, _ = bench.load_csv(args.out)
        new_keys = {tuple(str(r[k]) for k in KEY) for r in rows}
        rows = [r for r in old if tuple(str(r[k]) for k in KEY) not in new_keys] + rows
    path = bench.save_csv(rows, args.out, tags={
        "what": "scripts/bench_flash_attention.py: ms median (triton do_bench), TFLOP/s, peak memory above inputs",
        "flops": "4*N^2*d per head forward, /2 causal, x3.5 forward+backward",
    })
    print(f"wrote {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
