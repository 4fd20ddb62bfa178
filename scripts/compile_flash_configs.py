"""Compile every FlashAttention autotune config for real GPUs, without one -> course/results/kernel_configs_flash.csv.

    python scripts/compile_flash_configs.py                 # the full grid (sm_90, then sm_80), resumable
    python scripts/compile_flash_configs.py --arch 90       # one architecture
    python scripts/compile_flash_configs.py --arch 75 --dtype float16 --causal true   # sm_75 (T4) as committed
    python scripts/compile_flash_configs.py --ladder        # the ladder's rungs -> flash_ladder_compile.csv

For each kernel of the GPU path (forward, dK/dV, dQ), each config in ``FWD/DKDV/DQ_GPU_CONFIGS``,
head dim 64 and 128, causal and not, fp16 and bf16 (the dtypes the GPU path and the benchmark
run), and each architecture, it runs Triton's compiler (``course.gpu_compile.compile_report``)
and records registers per thread, spilled bytes, shared memory per block and the tensor-core
instruction. ``course.flash_configs`` reads the table at launch and keeps, for the running GPU's
architecture, only the configs that compiled with no spills and shared memory within the limit.

sm_75 (Turing, a free Colab T4) compiles its own candidates, ``flash_configs.TURING_CONFIGS``, in
fp16 (a T4 has no bf16) and, as committed, causal only (a budget of compiles: causal adds masking
to the same tiles). Triton takes the FMA path there (no tensor cores): operand tiles live in
registers, so tiles smaller than the sm_80+ ones already spill (fwd 64x32, 8 warps, d = 128: 2.5 KB)
and 3 stages of the larger ones overflow 64 KiB (fwd 128x64, 8 warps: 96 KiB). The table also keeps the sm_75 rows of tiles tried and dropped from the
candidates (they spill at d = 128: the reason the list is what it is); only candidates are judged.

Compiling is slow on a CPU (measured on 2 shared cores: ~2 s a config for sm_90, ~20 s for sm_80,
10-60 s for sm_75's small tiles),
so rows are written as they come and a rerun skips the rows already in the CSV (``--fresh`` to
start over). Rows record the Triton version; the CSV header records the date and machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import course  # noqa: F401  (first: sets the interpreter switch; compile_report compiles regardless)
from course import bench, flash_configs, gpu_compile

KEY = ("arch", "kernel", "config", "head_dim", "dtype", "causal")


def grid(archs, head_dims, dtypes, causals):
    """(arch, kernel, BlockConfig, head_dim, dtype, causal), most telling first (an interrupted run
    still has them): bf16 (the bar's dtype) before fp16, causal before not, both head dims and both
    archs before the next (dtype, causal) pair. sm_75 compiles its own candidates
    (``flash_configs.TURING_CONFIGS``) and fp16 only: a T4 has no bf16."""
    for dtype in dtypes:
        for causal in causals:
            for head_dim in head_dims:
                for arch in archs:
                    if arch in flash_configs.TURING_ARCHS and dtype == "bfloat16":
                        continue
                    for kernel in flash_configs.GPU_CONFIGS:
                        for config in flash_configs.candidate_configs(kernel, arch):
                            yield arch, kernel, config, head_dim, dtype, causal


def compile_row(arch, kernel, config, head_dim, dtype, causal) -> dict:
    start = time.perf_counter()
    row = {"arch": arch, "kernel": kernel, "config": flash_configs.config_name(config), "head_dim": head_dim,
           "dtype": dtype, "causal": causal}
    try:
        report = flash_configs.compile_config(kernel, config, head_dim=head_dim, dtype=dtype, causal=causal,
                                              arch=arch)
    except Exception as exc:  # a compile error is a result too: the config is not kept
        row.update(registers=-1, spills=-1, shared_bytes=-1, tensor_core="", error=f"{type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:120] if str(exc) else ''}")
    else:
        row.update(registers=report.registers, spills=report.spills, shared_bytes=report.shared_bytes,
                   tensor_core=report.tensor_core_instruction, error="")
    row.update(shared_limit=gpu_compile.SHARED_LIMIT[arch], triton=gpu_compile.triton_version(),
               compile_s=round(time.perf_counter() - start, 1))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=[75, 80, 90],
                   help="75 (Turing, T4): fp16 only, its own candidates; ~5-130 s a compile here")
    p.add_argument("--head-dim", type=int, nargs="+", default=[128, 64], choices=[64, 128])
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float16"], choices=["bfloat16", "float16"])
    p.add_argument("--causal", nargs="+", default=["true", "false"], choices=["true", "false"])
    p.add_argument("--fresh", action="store_true", help="recompile every row instead of resuming")
    p.add_argument("--ladder", action="store_true", help="compile the ladder's rungs instead (course.flash_ladder)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.ladder:
        from course import flash_ladder

        out = Path(args.out or flash_ladder.COMPILE_CSV)
        rows = flash_ladder.compile_rungs(args.arch, verbose=True)
        bench.save_csv(rows, out, tags={"what": "scripts/compile_flash_configs.py --ladder: compile reports of the "
                                                "FlashAttention ladder's rungs (course.flash_ladder)"})
        print(f"wrote {len(rows)} rows to {out}")
        return 0

    out = Path(args.out or flash_configs.CONFIG_TABLE)
    rows = []
    if out.exists() and not args.fresh:
        rows, _ = bench.load_csv(out)
    done = {tuple(str(r[k]) for k in KEY) for r in rows}
    todo = [case for case in grid(args.arch, args.head_dim, args.dtype, [c == "true" for c in args.causal])
            if tuple(str(x) for x in (case[0], case[1], flash_configs.config_name(case[2]), *case[3:])) not in done]
    print(f"{len(todo)} configs to compile ({len(done)} already in {out})", flush=True)
    tags = {"what": "scripts/compile_flash_configs.py: Triton compile reports (no GPU) of every FlashAttention "
                    "autotune config; spills = ptxas -v spill stores + loads, bytes per thread; sm_75: fp16, "
                    "Turing candidates (flash_configs.TURING_CONFIGS) and tiles tried and dropped"}
    start = time.perf_counter()
    for i, case in enumerate(todo, 1):
        row = compile_row(*case)
        rows.append(row)
        bench.save_csv(rows, out, tags=tags)  # after each row: an interrupted run keeps what it compiled
        print(f"{time.perf_counter() - start:7.0f}s {i}/{len(todo)} sm_{row['arch']} {row['kernel']:<5} "
              f"{row['config']:<16} d={row['head_dim']:<3} {row['dtype']:<8} causal={row['causal']!s:<5} "
              f"regs {row['registers']:>3} spills {row['spills']:>5} shared {row['shared_bytes']:>6} "
              f"{row['tensor_core'] or '-':<5} {row['error']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
