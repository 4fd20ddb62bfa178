"""Compile every autotune config of the LoRA and BitNet kernels for sm_75, sm_80 and sm_90, without a GPU.

    python scripts/compile_lora_bitnet_configs.py                 # sm_80/sm_90 -> course/results/kernel_configs_lora_bitnet.csv
    python scripts/compile_lora_bitnet_configs.py --kernels lora --lora-dtypes float32   # LoRA's fp32 (IEEE) path
    python scripts/compile_lora_bitnet_configs.py --archs 75 --lora-dtypes float16   # sm_75 (a T4: fp16, no bf16)
    python scripts/compile_lora_bitnet_configs.py --kernels bitnet --archs 90 --out /tmp/x.csv   # a subset

A run adds the rows it lacks to the CSV (``--fresh`` starts over), saving after each compile.

The GPU launchers (``course.lora._tuned``, ``course.bitnet._tuned``) prune their autotune configs by
this CSV: on a GPU of compute capability ``sm_<arch>`` they keep only the configs whose row for that
arch and specialization says ``fits`` (no register spill, shared memory within the arch's per-block
limit). An arch missing from the CSV keeps every config (see ``course.lora.configs_measured_fit``).

Each row is one ``triton.compile`` through ``course.gpu_compile.compile_report`` (Triton's own compiler
and bundled ptxas, as a launch on that GPU would run them), specialised as a launch on aligned
operands is: unit strides along K are constants (Triton specialises an integer argument equal to 1),
and the pointers and the sizes and row strides in ``course.lora.ALIGNED_ARGS`` carry Triton's
``tt.divisibility = 16`` (a launch adds it when a pointer is 16-byte aligned or an integer is a
multiple of 16; ``compile_report(divisible_by_16=...)``). It matters: without it, every LoRA config
compiled for sm_80 (bf16, one adapter) spilled, with it 9 of 12 fit. The launchers use these rows
only for launches that have those facts (``course.lora.launch_is_aligned``); other launches keep
every config. Spills are ptxas's own count (``bytes spill stores`` + ``loads`` of ``ptxas -v``).

Specializations compiled: LoRA in bf16 (what scripts/bench_lora.py runs) and fp32 (the checks' and
the notebook's fp32 path: ``tl.dot(input_precision="ieee")``, FMA units, no tensor cores on any
arch), one or several adapters, rank tile 16 (``course.lora.MEASURED_RANKS``: ranks up to 16);
BitNet with K a multiple of BLOCK_K (no K mask) or not. Launches of other specializations (fp16 on
sm_80/sm_90, ranks above 16) find no row and keep every config. bf16 and BitNet: 92 compiles, 3 to
20 s each on 2 shared, busy cores (~12 min); fp32 (``--lora-dtypes float32``): 48 compiles, 5 to
180 s each (34 min in all, measured).

sm_75 (Turing, a free Colab T4) compiles the launchers' own small tiles (``TURING_SHAPES`` in
``course.lora`` and ``course.bitnet``: Triton takes the FMA path below sm_80, no tensor cores),
LoRA in fp16. A config that does not compile is a row too (``error``, never ``fits``): measured,
Triton 3.9 cannot compile BitNet's int8 ``tl.dot`` for sm_75 at all, and the ternary launcher then
refuses with that reason (``course.lora.refuse_if_no_config_compiles``). 12 compiles, 1 to 20 s each.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import course  # noqa: F401  (first: Triton in the interpreter on a CPU; compile_report still compiles)
from course import bench, bitnet, gpu_compile, lora

import torch  # noqa: E402
import triton  # noqa: E402

ARCHS = (80, 90)
I32 = "i32"
TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
LORA_DTYPES = (torch.bfloat16,)  # what the GPU benchmark runs (the checks also run bf16)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
KEY = ("kernel", "arch", "variant", "config")


def lora_signature(dtype: torch.dtype) -> dict:
    t = "*" + TRITON_DTYPE[dtype]
    sig = dict(zip(["x_ptr", "w_ptr", "a_ptr", "b_ptr", "ids_ptr", "scale_ptr", "y_ptr"],
                   [t] * 4 + ["*i32", "*fp32", t]))
    sig.update({"M": I32, "N": I32, "K": I32, "R": I32, "scale": "fp32", "M_BUCKET": I32})
    sig.update({n: I32 for n in ["stride_xm", "stride_wn", "stride_aa", "stride_ar", "stride_ba", "stride_bn",
                                 "stride_ym", "stride_yn"]})
    return sig


BITNET_SIG = {**dict(zip(["x_ptr", "xs_ptr", "wp_ptr", "y_ptr", "w_scale"], ["*i8", "*fp32", "*i32", "*fp32", "fp32"])),
              **{n: I32 for n in ["M", "N", "K", "M_BUCKET", "stride_xm", "stride_wn", "stride_ym", "stride_yn"]}}


def lora_cases(dtypes=LORA_DTYPES, arch=80):
    """(kernel name, variant, config, jit kernel, signature, constexprs) for every LoRA specialization
    and every config the launcher may try on ``sm_<arch>`` (the Turing tiles below sm_80)."""
    configs = lora._turing_configs() if arch < 80 else lora._gpu_configs()
    for dtype in dtypes:
        for multi in (False, True):
            for rank in lora.MEASURED_RANKS:
                variant = lora.lora_variant(dtype, multi, rank, aligned=True)
                consts = {"MULTI": multi, "PER_ADAPTER_SCALE": multi, "IEEE": dtype == torch.float32,
                          "BLOCK_R": rank, "stride_xk": 1, "stride_wk": 1, "stride_ak": 1, "stride_br": 1}
                for config in configs:
                    yield ("lora", variant, config, lora._lora_fused_kernel, lora_signature(dtype),
                           {**consts, **config.kwargs})


def bitnet_cases(arch=80):
    for even_k in (True, False):
        for config in (bitnet._turing_configs() if arch < 80 else bitnet._gpu_configs()):
            consts = {"EVEN_K": even_k, "stride_xk": 1, "stride_ww": 1, **config.kwargs}
            yield "bitnet", bitnet.bitnet_variant(even_k, aligned=True), config, bitnet._ternary_matmul_kernel, BITNET_SIG, consts


def tensor_core_instruction(ptx: str) -> str:
    """The first tensor-core instruction in the PTX, e.g. 'mma.sync.aligned.m16n8k32...s8' or 'wgmma.mma_async...'."""
    found = re.search(r"\b((?:wgmma\.mma_async|mma\.sync)[\w.]*)", ptx)
    return found.group(1) if found else ""


def _first_compiler_error(log: str) -> str:
    """The first ``error:`` line MLIR printed (Triton's exception says only 'PassManager::run failed')."""
    found = re.search(r"error: (.*)", log)
    return found.group(1).split(", but got")[0][:160] if found else ""


def _compile_capturing_stderr(compile_fn):
    """``compile_fn()``, with what the compiler writes to file descriptor 2 returned beside it."""
    import os
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            try:
                return compile_fn(), None, ""
            except Exception as exc:  # a compile error is a result too: recorded, the config never fits
                error = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return None, error, log.read()


def measure(kernel_name, variant, config, kernel, signature, consts, arch) -> dict:
    row = {"kernel": kernel_name, "arch": arch, "variant": variant, "config": lora.config_name(config),
           "block_m": config.kwargs["BLOCK_M"], "block_n": config.kwargs["BLOCK_N"],
           "block_k": config.kwargs["BLOCK_K"], "num_warps": config.num_warps, "num_stages": config.num_stages}
    start = time.time()
    report, error, log = _compile_capturing_stderr(lambda: gpu_compile.compile_report(
        kernel, signature, consts, arch, num_warps=config.num_warps, num_stages=config.num_stages,
        divisible_by_16=lora.ALIGNED_ARGS[kernel_name]))
    if report is None:
        row.update({"registers": -1, "spill_bytes": -1, "stack_bytes": -1, "shared_bytes": -1,
                    "shared_limit": gpu_compile.SHARED_LIMIT[arch], "tensor_core_instr": "", "fits": False})
    else:
        row.update({"registers": report.registers, "spill_bytes": report.spills, "stack_bytes": report.stack_bytes,
                    "shared_bytes": report.shared_bytes, "shared_limit": report.shared_limit,
                    "tensor_core_instr": tensor_core_instruction(report.ptx),
                    "fits": report.spills == 0 and report.shared_bytes <= report.shared_limit})
    row.update({"compile_s": round(time.time() - start, 1), "triton": triton.__version__,
                "date": time.strftime("%Y-%m-%d", time.gmtime()),
                "error": "" if error is None else f"{type(error).__name__}: {_first_compiler_error(log) or error}"})
    return row


def _key(row) -> tuple:
    return tuple(str(row[k]) for k in KEY)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", nargs="+", default=["lora", "bitnet"], choices=["lora", "bitnet"])
    p.add_argument("--archs", nargs="+", type=int, default=list(ARCHS), choices=[75, 80, 90])
    p.add_argument("--lora-dtypes", nargs="+", default=["bfloat16"], choices=list(DTYPES))
    p.add_argument("--out", default=str(lora.KERNEL_CONFIGS_CSV))
    p.add_argument("--fresh", action="store_true", help="start the CSV over instead of adding to it")
    args = p.parse_args(argv)
    dtypes = [DTYPES[d] for d in args.lora_dtypes]
    rows = []
    if not args.fresh and Path(args.out).exists():  # resume / add: rows already measured are kept, not redone
        rows, _ = bench.load_csv(args.out)
    for r in rows:  # rows measured before the error column existed compiled
        r.setdefault("error", "")
    done = {_key(r) for r in rows}
    tags = {"command": "python scripts/compile_lora_bitnet_configs.py (runs add to the CSV; see each row's date)"}
    for arch in args.archs:
        cases = [c for name in args.kernels for c in (lora_cases(dtypes, arch) if name == "lora" else bitnet_cases(arch))]
        for case in cases:
            if _key({"kernel": case[0], "arch": arch, "variant": case[1], "config": lora.config_name(case[2])}) in done:
                continue
            row = measure(*case, arch)
            rows.append(row)
            bench.save_csv(rows, args.out, tags=tags)  # after each row: an interrupted run keeps what it compiled
            print(f"sm_{arch} {row['kernel']} {row['variant']} {row['config']}: {row['registers']} regs, "
                  f"{row['spill_bytes']} B spilled, {row['shared_bytes'] / 1024:.0f} KiB shared, "
                  f"{row['tensor_core_instr'][:24] or 'no tensor cores'}, fits {row['fits']} ({row['compile_s']} s) {row['error']}",
                  flush=True)
    print(f"{args.out}: {len(rows)} rows; fit: {sum(str(r['fits']) == 'True' for r in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
