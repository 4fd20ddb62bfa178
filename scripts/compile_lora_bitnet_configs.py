"""Compile every autotune config of the LoRA and BitNet kernels for sm_80 and sm_90, without a GPU.

    python scripts/compile_lora_bitnet_configs.py                 # all -> course/results/kernel_configs_lora_bitnet.csv
    python scripts/compile_lora_bitnet_configs.py --kernels bitnet --archs 90 --out /tmp/x.csv   # a subset

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

Specializations compiled: LoRA in bf16 (what scripts/bench_lora.py runs), one or several adapters,
rank tile 16 (``course.lora.MEASURED_RANKS``: ranks up to 16); BitNet with K a multiple of BLOCK_K
(no K mask) or not. Launches of other specializations (fp16, fp32, ranks above 16) find no row and
keep every config. fp32 is left out for time: it runs ``tl.dot`` in IEEE precision (no tensor cores)
and took 20 to 120 s a compile here; a partial run (sm_80, one adapter) had 11 of 12 configs spill or
overflow, so fp32 on a GPU (the checks' small shapes) would need its own smaller tiles.
92 compiles, 3 to 20 s each on 2 shared, busy cores: ~12 min.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import course  # noqa: F401  (first: Triton in the interpreter on a CPU; compile_report still compiles)
from course import bench, bitnet, gpu_compile, lora

import torch  # noqa: E402
import triton  # noqa: E402

ARCHS = (80, 90)
I32 = "i32"
TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
LORA_DTYPES = (torch.bfloat16,)  # what the GPU benchmark runs (the checks also run bf16)


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


def lora_cases():
    """(kernel name, variant, config, jit kernel, signature, constexprs) for every LoRA specialization."""
    for dtype in LORA_DTYPES:
        for multi in (False, True):
            for rank in lora.MEASURED_RANKS:
                variant = lora.lora_variant(dtype, multi, rank, aligned=True)
                consts = {"MULTI": multi, "PER_ADAPTER_SCALE": multi, "IEEE": dtype == torch.float32,
                          "BLOCK_R": rank, "stride_xk": 1, "stride_wk": 1, "stride_ak": 1, "stride_br": 1}
                for config in lora._gpu_configs():
                    yield ("lora", variant, config, lora._lora_fused_kernel, lora_signature(dtype),
                           {**consts, **config.kwargs})


def bitnet_cases():
    for even_k in (True, False):
        for config in bitnet._gpu_configs():
            consts = {"EVEN_K": even_k, "stride_xk": 1, "stride_ww": 1, **config.kwargs}
            yield "bitnet", bitnet.bitnet_variant(even_k, aligned=True), config, bitnet._ternary_matmul_kernel, BITNET_SIG, consts


def tensor_core_instruction(ptx: str) -> str:
    """The first tensor-core instruction in the PTX, e.g. 'mma.sync.aligned.m16n8k32...s8' or 'wgmma.mma_async...'."""
    found = re.search(r"\b((?:wgmma\.mma_async|mma\.sync)[\w.]*)", ptx)
    return found.group(1) if found else ""


def measure(kernel_name, variant, config, kernel, signature, consts, arch) -> dict:
    row = {"kernel": kernel_name, "arch": arch, "variant": variant, "config": lora.config_name(config),
           "block_m": config.kwargs["BLOCK_M"], "block_n": config.kwargs["BLOCK_N"],
           "block_k": config.kwargs["BLOCK_K"], "num_warps": config.num_warps, "num_stages": config.num_stages}
    start = time.time()
    report = gpu_compile.compile_report(kernel, signature, consts, arch, num_warps=config.num_warps,
                                        num_stages=config.num_stages,
                                        divisible_by_16=lora.ALIGNED_ARGS[kernel_name])
    row.update({"registers": report.registers, "spill_bytes": report.spills, "stack_bytes": report.stack_bytes,
                "shared_bytes": report.shared_bytes, "shared_limit": report.shared_limit,
                "tensor_core_instr": tensor_core_instruction(report.ptx),
                "fits": report.spills == 0 and report.shared_bytes <= report.shared_limit,
                "compile_s": round(time.time() - start, 1), "triton": triton.__version__,
                "date": time.strftime("%Y-%m-%d", time.gmtime())})
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", nargs="+", default=["lora", "bitnet"], choices=["lora", "bitnet"])
    p.add_argument("--archs", nargs="+", type=int, default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--out", default=str(lora.KERNEL_CONFIGS_CSV))
    args = p.parse_args(argv)
    cases = [c for name in args.kernels for c in (lora_cases() if name == "lora" else bitnet_cases())]
    rows = []
    for arch in args.archs:
        for case in cases:
            row = measure(*case, arch)
            rows.append(row)
            print(f"sm_{arch} {row['kernel']} {row['variant']} {row['config']}: {row['registers']} regs, "
                  f"{row['spill_bytes']} B spilled, {row['shared_bytes'] / 1024:.0f} KiB shared, "
                  f"{row['tensor_core_instr'][:24] or 'no tensor cores'}, fits {row['fits']} ({row['compile_s']} s)",
                  flush=True)
    path = bench.save_csv(rows, args.out, tags={"command": "python scripts/compile_lora_bitnet_configs.py " +
                                                " ".join(argv if argv is not None else sys.argv[1:])})
    print(f"wrote {len(rows)} rows to {path}; fit: {sum(r['fits'] for r in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
