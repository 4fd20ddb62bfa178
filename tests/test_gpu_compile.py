"""Compile the course's Triton kernels for real NVIDIA targets without a GPU (``course.gpu_compile``).

Fails on a compile error, on register spills in a kept autotune config, on shared memory over the
architecture's per-block limit, and on missing tensor-core instructions where ``tl.dot`` runs on
fp16/bf16. Select with ``pytest tests/test_gpu_compile.py`` (marked ``slow``). Compiling is slow
(measured here, 2 shared cores: ~2 s a config for sm_90, ~20 s for sm_80, ~130 s for sm_75), so each
kernel is compiled for a sample: the kept config with the most work per program at head dim 128.
"""

from __future__ import annotations

import pytest

import course  # noqa: F401  (first)
from course import bitnet, gpu_compile, lora
from course import flash_attention as fa

import torch  # noqa: E402

pytestmark = pytest.mark.slow

I32 = "i32"
FWD_SIG = dict(zip(["Q", "K", "V", "O", "L", "sm_scale"], ["*fp16"] * 4 + ["*fp32", "fp32"]))
FWD_SIG.update({n: I32 for n in ["stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn",
                                 "stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_oh", "stride_om",
                                 "H", "N_Q", "N_K"]})
BWD_SIG = dict(zip(["Q", "K", "V", "DO", "L", "Delta"], ["*fp16"] * 4 + ["*fp32", "*fp32"]))
DKDV_SIG = {**BWD_SIG, "DK": "*fp16", "DV": "*fp16", "sm_scale": "fp32", "N_Q": I32, "N_K": I32}
DQ_SIG = {**BWD_SIG, "DQ": "*fp16", "sm_scale": "fp32", "N_Q": I32, "N_K": I32}
LORA_SIG = dict(zip(["x_ptr", "w_ptr", "a_ptr", "b_ptr", "ids_ptr", "scale_ptr", "y_ptr"],
                    ["*fp16"] * 4 + ["*i32", "*fp32", "*fp16"]))
LORA_SIG.update({"M": I32, "N": I32, "K": I32, "R": I32, "scale": "fp32"})
LORA_SIG.update({n: I32 for n in ["stride_xm", "stride_xk", "stride_wn", "stride_wk", "stride_aa", "stride_ar",
                                  "stride_ak", "stride_ba", "stride_bn", "stride_br", "stride_ym", "stride_yn"]})
BITNET_SIG = dict(zip(["x_ptr", "xs_ptr", "wp_ptr", "y_ptr", "w_scale"], ["*i8", "*fp32", "*i32", "*fp32", "fp32"]))
BITNET_SIG.update({n: I32 for n in ["M", "N", "K", "stride_xm", "stride_xk", "stride_wn", "stride_ww",
                                    "stride_ym", "stride_yn"]})


def _kept(kind, configs, head_dim=128):
    """The configs the GPU path keeps after pruning, largest tile first."""
    kept = [c for c in configs if not fa.spills_on_sm90(kind, c, head_dim)]
    return sorted(kept, key=lambda c: (c.block_m * c.block_n, c.num_warps), reverse=True)


def _fa_case(kind, kernel, sig, config):
    consts = {"HEAD_DIM": 128, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "CAUSAL": True}
    return (f"{kind}-{config.block_m}x{config.block_n}-w{config.num_warps}s{config.num_stages}", kernel, sig, consts,
            config.num_warps, config.num_stages, True)


def _cases():
    cases = [_fa_case("fwd", fa._fwd_kernel, FWD_SIG, _kept("fwd", fa.FWD_GPU_CONFIGS)[0]),
             _fa_case("dkdv", fa._bwd_dkdv_kernel, DKDV_SIG, _kept("dkdv", fa.DKDV_GPU_CONFIGS)[0]),
             _fa_case("dq", fa._bwd_dq_kernel, DQ_SIG, _kept("dq", fa.DQ_GPU_CONFIGS)[0])]
    big = max(lora._gpu_configs(), key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
    cases.append(("lora-" + "x".join(str(big.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
                  lora._lora_fused_kernel, LORA_SIG,
                  {"MULTI": True, "PER_ADAPTER_SCALE": True, "IEEE": False, "BLOCK_R": 16, **big.kwargs},
                  big.num_warps, big.num_stages, True))
    bit = max(bitnet._gpu_configs(), key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])
    cases.append(("bitnet-" + "x".join(str(bit.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
                  bitnet._ternary_matmul_kernel, BITNET_SIG, dict(bit.kwargs), bit.num_warps, bit.num_stages, False))
    return cases


CASES = _cases()
SM75 = pytest.mark.xfail(run=False, reason=(
    "measured: Triton 3.9 compiles tl.dot for sm_75 without mma (no tensor cores) and the fp16 FA forward "
    "128x64 (8 warps, 3 stages) needs 96 KiB of shared memory, over sm_75's 64 KiB; each sm_75 compile "
    "takes ~130 s here. Turing needs its own pruned configs (num_stages <= 2, smaller tiles)."))


@pytest.mark.parametrize("arch", [90, 80, pytest.param(75, marks=SM75)])
@pytest.mark.parametrize("name,kernel,sig,consts,warps,stages,mma", CASES, ids=[c[0] for c in CASES])
def test_kernel_compiles_for_the_gpu(arch, name, kernel, sig, consts, warps, stages, mma, request):
    if name.startswith("bitnet") and arch in (80, 90):
        request.applymarker(pytest.mark.xfail(strict=arch == 90, reason=(
            "measured: bitnet config 16x128x256 (4 warps, 3 stages) needs 292 KiB of shared memory on sm_90, "
            "over 227 KiB (and sm_80's 163 KiB); the autotuner drops it at launch (OutOfResources). "
            "Prune it per arch or lower its stages (the BitNet kernel rewrite is pending).")))
    report = gpu_compile.compile_report(kernel, sig, consts, arch, num_warps=warps, num_stages=stages)
    print(f"{name}: {report.summary()}")
    assert report.spills == 0, f"{name} spills on sm_{arch}: {report.summary()}"
    assert report.shared_bytes <= report.shared_limit, f"{name}: {report.summary()}"
    if mma:
        assert report.has_mma, f"{name}: tl.dot on fp16 without tensor-core instructions on sm_{arch}"


def test_compile_report_refuses_unknown_arguments():
    with pytest.raises(ValueError, match="no argument"):
        gpu_compile.compile_report(bitnet._ternary_matmul_kernel, {"nope": "i32"}, {}, 90)
    with pytest.raises(ValueError, match="arch must be"):
        gpu_compile.compile_report(bitnet._ternary_matmul_kernel, {}, {}, 70)



def test_compiling_after_interpreted_launches_ignores_the_interpreters_leftover_patches():
    # Under TRITON_INTERPRET=1 a @triton.jit helper called from a kernel patches tl.core for the
    # interpreter and never restores it; compiling afterwards then failed with "'value' object has no
    # attribute 'dtype'" (seen in CI on sm_80, and in notebook 02). Reproduce: interpreted FlashAttention
    # forward and backward (they call helpers), then compile the forward kernel.
    q, k, v = fa.make_qkv(2, 70, 64, torch.float32)
    fa.flash_forward(q, k, v, causal=True)
    fa.flash_attention(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), causal=True).sum().backward()
    consts = {"HEAD_DIM": 64, "BLOCK_M": 64, "BLOCK_N": 64, "CAUSAL": True}
    report = gpu_compile.compile_report(fa._fwd_kernel, FWD_SIG, consts, 80, num_warps=4, num_stages=2)
    assert report.has_mma and report.spills == 0
