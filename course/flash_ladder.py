"""The FlashAttention ladder: from the learner's kernel to the reference, one optimisation a rung.

Notebook 02's learner writes a correct forward kernel (base-e softmax, key blocks past the diagonal
skipped, every block masked, 32 x 32 tiles) and a one-kernel backward that adds dQ with atomics.
The reference (:mod:`course.flash_kernels`) adds several optimisations at once. The ladder takes
them one at a time, so each can be seen in the compiled code and, on a GPU, in TFLOP/s:

=====  ==================================================================================
rung   what changes (each rung keeps the ones above it)
=====  ==================================================================================
0      the learner's forward kernel (a copy of notebook 02's solution), 32 x 32 tiles
1      the reference's code with every switch off: base e, visits (and masks) every key block
2      + causal block skipping: key blocks past the diagonal are never loaded
3      + exp2: ``log2(e)`` folded into the scale, one ``exp2`` per score instead of ``exp``
4      + masked/unmasked split: only diagonal and ragged-tail blocks pay for the mask
5      + larger tiles: 128 x 64, 8 warps, 3 pipeline stages (Hopper ``wgmma`` needs 64-row tiles)
6      + autotuning over the configs kept for this GPU (:mod:`course.flash_configs`)
7      forward+backward, the learner's backward: one kernel, dQ by ``atomic_add``, 32 x 32
8      forward+backward, the reference's two-pass backward (dK/dV, then dQ; no atomics), autotuned
=====  ==================================================================================

:func:`ladder_rows` builds the table: each rung's compile report for ``sm_<arch>`` on the CPU
(registers, spills, shared memory, tensor-core instruction; cached in :data:`COMPILE_CSV` by
``scripts/compile_flash_configs.py --ladder``, as compiling the rungs takes minutes) and the TFLOP/s
measured on a GPU by ``scripts/bench_flash_attention.py --ladder`` (:data:`GPU_CSV`) when that file
exists, at :data:`LADDER_SHAPE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
import triton.language as tl

from . import flash_attention as fa
from . import flash_configs

RESULTS = Path(__file__).resolve().parent / "results"
#: Compile reports of every rung, per arch (``scripts/compile_flash_configs.py --ladder``).
COMPILE_CSV = RESULTS / "flash_ladder_compile.csv"
#: TFLOP/s of every rung on a GPU (``scripts/bench_flash_attention.py --ladder``; the GPU kit runs it).
GPU_CSV = RESULTS / "flash_ladder_gpu.csv"
#: Where the ladder is compiled and timed: the issue's bar shape, causal (so block skipping matters).
LADDER_SHAPE = {"dtype": "bfloat16", "batch_heads": 32, "n": 4096, "d": 128, "causal": True}
NOT_MEASURED = "not measured (no GPU lent)"


# --- the learner's kernels: notebook 02's solutions, copied (a test checks they still match) -------


@triton.jit
def learner_fwd_kernel(Q, K, V, O, L, sm_scale,  # noqa: E741
                       stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                       H, N_Q, N_K,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # int64: b * stride_qb passes 2^31 in large batches (above)
    b = bh // H
    h = bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        hi = tl.minimum((start_m + 1) * BLOCK_M, N_K)   # key blocks past the diagonal: skipped
    else:
        hi = N_K
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < N_K
        k = tl.load(K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * sm_scale
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (offs_m[:, None] >= cols[None, :])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(L + bh * N_Q + offs_m, m_i + tl.log(l_i), mask=row_ok)


@triton.jit
def learner_bwd_kernel(Q, K, V, DO, L, Delta, DQ, DK, DV, sm_scale, N_Q, N_K,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)  # int64: bh * N_K * HEAD_DIM passes 2^31 in large batches
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N_K
    kv_ptrs = bh * N_K * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + kv_ptrs, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + kv_ptrs, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
    else:
        lo = 0
    for start_m in range(lo, N_Q, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < N_Q
        q_ptrs = bh * N_Q * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :]
        q = tl.load(Q + q_ptrs, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + q_ptrs, mask=row_ok[:, None], other=0.0)
        lse = tl.load(L + bh * N_Q + rows, mask=row_ok, other=0.0)
        delta = tl.load(Delta + bh * N_Q + rows, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)) * sm_scale
        p = tl.exp(s - lse[:, None])
        keep = row_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            keep = keep & (rows[:, None] >= offs_n[None, :])
        p = tl.where(keep, p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None]) * sm_scale
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        tl.atomic_add(DQ + q_ptrs, tl.dot(ds.to(k.dtype), k), mask=row_ok[:, None])
    tl.store(DK + kv_ptrs, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + kv_ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


# --- the rungs ------------------------------------------------------------------------------------

_OFF = {"USE_EXP2": False, "SKIP_FUTURE_BLOCKS": False, "SPLIT_MASKED": False}
_SMALL = flash_configs.DEFAULT_CONFIG  # 32 x 32, 4 warps, 2 stages: what the learner's kernel gets
_LARGE = flash_configs.BlockConfig(128, 64, 8, 3)


@dataclass(frozen=True)
class Rung:
    """One row of the ladder: which kernel, which config (None: autotuned), which switches, which mode."""

    index: int
    step: str
    kernel: str  # "learner_fwd", "ladder_fwd", "tuned_fwd", "atomic_bwd" or "two_pass_bwd"
    config: flash_configs.BlockConfig | None
    switches: dict = field(default_factory=dict)
    mode: str = "fwd"


RUNGS = (
    Rung(0, "learner's forward (notebook 02)", "learner_fwd", _SMALL),
    Rung(1, "reference code, every switch off", "ladder_fwd", _SMALL, dict(_OFF)),
    Rung(2, "+ causal block skipping", "ladder_fwd", _SMALL, {**_OFF, "SKIP_FUTURE_BLOCKS": True}),
    Rung(3, "+ exp2", "ladder_fwd", _SMALL, {**_OFF, "SKIP_FUTURE_BLOCKS": True, "USE_EXP2": True}),
    Rung(4, "+ masked/unmasked split", "ladder_fwd", _SMALL,
         {"USE_EXP2": True, "SKIP_FUTURE_BLOCKS": True, "SPLIT_MASKED": True}),
    Rung(5, "+ larger tiles (wgmma on sm_90)", "ladder_fwd", _LARGE,
         {"USE_EXP2": True, "SKIP_FUTURE_BLOCKS": True, "SPLIT_MASKED": True}),
    Rung(6, "+ autotuning (kept configs)", "tuned_fwd", None),
    Rung(7, "fwd+bwd: learner's atomic backward", "atomic_bwd", _SMALL, mode="fwd_bwd"),
    Rung(8, "fwd+bwd: two-pass backward (autotuned)", "two_pass_bwd", None, mode="fwd_bwd"),
)


def run_rung(rung: Rung, q, k, v, *, causal: bool, do=None):
    """Run one rung: the forward's ``o`` (mode fwd), or ``(o, dq, dk, dv)`` (mode fwd_bwd, given ``do``).

    Forward rungs go through :func:`course.flash_attention.launch_forward` (validation, strides,
    grid); the backward rungs run the autotuned reference forward, then their backward.
    """
    if not isinstance(rung, Rung):
        raise TypeError(f"rung must be a Rung (one of RUNGS), got {type(rung).__name__}")
    if rung.kernel == "learner_fwd":
        return fa.launch_forward(learner_fwd_kernel, q, k, v, causal=causal, config=rung.config)[0]
    if rung.kernel == "ladder_fwd":
        return fa.launch_forward(fa._fwd_ladder_kernel, q, k, v, causal=causal, config=rung.config,
                                 constexprs=rung.switches)[0]
    if rung.kernel == "tuned_fwd":
        return fa.flash_forward(q, k, v, causal=causal)[0]
    if do is None:
        raise ValueError(f"rung {rung.index} ({rung.step}) times forward+backward: give do (dL/dO)")
    o, lse = fa.flash_forward(q, k, v, causal=causal)
    if rung.kernel == "atomic_bwd":
        grads = fa.launch_atomic_backward(learner_bwd_kernel, q, k, v, o, lse, do, causal=causal, config=rung.config)
    else:
        grads = fa.flash_backward(q, k, v, o, lse, do, causal=causal)
    return (o, *grads)


# --- compile reports (cached in COMPILE_CSV) -------------------------------------------------------

_KIND = {"learner_fwd": "fwd", "ladder_fwd": "fwd", "atomic_bwd": "atomic"}


def _compile_one(rung: Rung, arch: int) -> list[dict]:
    """Compile reports of the kernels a rung launches (two for the two-pass backward)."""
    shape = LADDER_SHAPE
    common = dict(head_dim=shape["d"], dtype=shape["dtype"], causal=shape["causal"], arch=arch)
    if rung.kernel in ("tuned_fwd", "two_pass_bwd"):
        return []  # summarised from the per-config table (course.flash_configs.CONFIG_TABLE) instead
    if rung.kernel == "atomic_bwd":
        sig = {**flash_configs.signature("dkdv", shape["dtype"]), "DQ": "*fp32"}
        sig = {n: sig[n] for n in ("Q", "K", "V", "DO", "L", "Delta", "DQ", "DK", "DV", "sm_scale", "N_Q", "N_K")}
        from . import gpu_compile

        c = rung.config
        consts = {"HEAD_DIM": shape["d"], "BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "CAUSAL": shape["causal"]}
        aligned = [n for n, t in sig.items() if t.startswith("*") or t == "i32"]  # as compile_config does
        report = gpu_compile.compile_report(learner_bwd_kernel, sig, consts, arch, num_warps=c.num_warps,
                                            num_stages=c.num_stages, divisible_by_16=aligned)
        kernels = [("learner_bwd_kernel", report)]
    else:
        name, kernel = (("learner_fwd_kernel", learner_fwd_kernel) if rung.kernel == "learner_fwd"
                        else ("_fwd_ladder_kernel", fa._fwd_ladder_kernel))
        kernels = [(name, flash_configs.compile_config("fwd", rung.config, kernel=kernel, **common, **rung.switches))]
    return [{"rung": rung.index, "arch": arch, "kernel": name, "config": flash_configs.config_name(rung.config),
             "registers": r.registers, "spills": r.spills, "shared_bytes": r.shared_bytes,
             "tensor_core": r.tensor_core_instruction} for name, r in kernels]


def compile_rungs(archs=(90, 80), *, verbose: bool = False) -> list[dict]:
    """Compile every rung's kernels for each arch (minutes on a CPU): rows for :data:`COMPILE_CSV`."""
    from . import gpu_compile

    rows = []
    for arch in archs:
        for rung in RUNGS:
            for row in _compile_one(rung, arch):
                row["triton"] = gpu_compile.triton_version()
                rows.append(row)
                if verbose:
                    print(row, flush=True)
    return rows


def _from_config_table(kinds: tuple[str, ...], arch: int, table: Path) -> dict:
    """Registers/spills/shared/tensor core over the configs the autotuner keeps, as 'min-max' strings."""
    from . import bench

    shape = LADDER_SHAPE
    if not Path(table).exists():
        return {}
    rows, _ = bench.load_csv(table)
    out = {"kernel": [], "config": [], "registers": [], "spills": [], "shared": [], "tensor_core": []}
    for kind in kinds:
        kept = {flash_configs.config_name(c) for c in flash_configs.kept_configs(
            kind, flash_configs.GPU_CONFIGS[kind], arch=arch, head_dim=shape["d"], table=table)}
        mine = [r for r in rows if int(r["arch"]) == arch and r["kernel"] == kind and r["config"] in kept
                and int(r["head_dim"]) == shape["d"] and r["dtype"] == shape["dtype"]
                and str(r["causal"]) == str(shape["causal"]) and not r.get("error")]
        if not mine:
            return {}
        regs = [int(r["registers"]) for r in mine]
        shared = [int(r["shared_bytes"]) / 1024 for r in mine]
        out["kernel"].append(kind)
        out["config"].append(f"{len(mine)} of {len(flash_configs.GPU_CONFIGS[kind])} kept")
        out["registers"].append(f"{min(regs)}-{max(regs)}")
        out["spills"].append(f"{max(int(r['spills']) for r in mine)} B")
        out["shared"].append(f"{min(shared):.0f}-{max(shared):.0f} KiB")
        out["tensor_core"].append("/".join(sorted({r["tensor_core"] or "none" for r in mine})))
    return {key: " | ".join(values) for key, values in out.items()}


def _measured(path: Path) -> tuple[dict, str]:
    """{rung index: TFLOP/s} at LADDER_SHAPE from the GPU CSV, and where/when it was measured."""
    from . import bench

    if not Path(path).exists():
        return {}, ""
    rows, tags = bench.load_csv(path)
    shape = LADDER_SHAPE
    found = {int(r["rung"]): float(r["tflops"]) for r in rows
             if r.get("dtype") == shape["dtype"] and int(r["batch_heads"]) == shape["batch_heads"]
             and int(r["n"]) == shape["n"] and int(r["d"]) == shape["d"]
             and str(r["causal"]) == str(shape["causal"])}
    return found, f"{tags.get('device', '?')}, {tags.get('date', '?')}"


def ladder_rows(arch: int = 90, *, compile_csv: Path = COMPILE_CSV, gpu_csv: Path = GPU_CSV,
                config_table: Path = flash_configs.CONFIG_TABLE) -> list[dict]:
    """The ladder as one table: a row per rung with its compile report on ``sm_<arch>`` and its
    measured TFLOP/s at :data:`LADDER_SHAPE` (or :data:`NOT_MEASURED`).

    Reads the cached compile reports (``scripts/compile_flash_configs.py --ladder``) and, for the
    autotuned rungs, the per-config table (ranges over the configs kept on that arch).
    """
    from . import bench

    if arch not in (80, 90):
        raise ValueError(f"arch must be 80 or 90 (the archs compiled for the ladder), got {arch!r}")
    if not Path(compile_csv).exists():
        raise FileNotFoundError(f"no ladder compile reports at {compile_csv}: run "
                                "`python scripts/compile_flash_configs.py --ladder`")
    compiled, _ = bench.load_csv(compile_csv)
    measured, where = _measured(gpu_csv)
    rows = []
    for rung in RUNGS:
        mine = [r for r in compiled if int(r["rung"]) == rung.index and int(r["arch"]) == arch]
        if rung.kernel == "tuned_fwd":
            cols = _from_config_table(("fwd",), arch, config_table)
        elif rung.kernel == "two_pass_bwd":
            cols = _from_config_table(("dkdv", "dq"), arch, config_table)
        elif mine:
            r = mine[0]
            cols = {"kernel": r["kernel"], "config": r["config"], "registers": str(r["registers"]),
                    "spills": f"{r['spills']} B", "shared": f"{int(r['shared_bytes']) / 1024:.0f} KiB",
                    "tensor_core": r["tensor_core"] or "none"}
        else:
            cols = {}
        tflops = measured.get(rung.index)
        rows.append({"rung": rung.index, "step": rung.step, "mode": rung.mode,
                     "kernel": cols.get("kernel", "?"), "config": cols.get("config", "not compiled"),
                     f"registers (sm_{arch})": cols.get("registers", "?"), "spills": cols.get("spills", "?"),
                     "shared": cols.get("shared", "?"), "tensor cores": cols.get("tensor_core", "?"),
                     "TFLOP/s on GPU": f"{tflops:.1f} ({where})" if tflops is not None else NOT_MEASURED})
    return rows


def measured_rows(rungs=RUNGS, *, repeats: int = 50, device=None) -> list[dict]:
    """Time each rung at :data:`LADDER_SHAPE` on the current (GPU) device: rows for :data:`GPU_CSV`."""
    from . import bench, runtime

    shape = LADDER_SHAPE
    dtype = getattr(torch, shape["dtype"])
    device = runtime.device() if device is None else torch.device(device)
    q, k, v = fa.make_qkv(shape["batch_heads"], shape["n"], shape["d"], dtype, device)
    do = torch.randn_like(q)
    rows = []
    for rung in rungs:
        def run(rung=rung):
            return run_rung(rung, q, k, v, causal=shape["causal"], do=do if rung.mode == "fwd_bwd" else None)

        run()  # compile (and autotune) outside the timed region
        timing = bench.time_fn(run, warmup=2, repeats=repeats, device=device)
        flops = fa.attention_flops(shape["batch_heads"], shape["n"], shape["n"], shape["d"], causal=shape["causal"],
                                   mode=rung.mode)
        rows.append({"rung": rung.index, "step": rung.step, "mode": rung.mode, **shape,
                     "ms": timing.median_ms, "tflops": flops / (timing.median_ms * 1e-3) / 1e12})
    return rows
