"""Compile the course's Triton kernels for real NVIDIA targets without a GPU (``course.gpu_compile``).

Fails on a compile error, on register spills in a kept autotune config, on shared memory over the
architecture's per-block limit, and on missing tensor-core instructions where ``tl.dot`` runs on
fp16/bf16 on sm_80 and up. Select with ``pytest tests/test_gpu_compile.py`` (marked ``slow``).
Compiling is slow (measured here, 2 shared cores: ~2 s a config for sm_90, ~20 s for sm_80; sm_75's
small Turing tiles 5-60 s, its large ones ~130 s), so the committed compile tables are the cache and
each kernel is compiled live for a sample: per arch, one kept config at head dim 128.

sm_75 (Turing: a free Colab T4) has no tensor-core path in this Triton: its matmul pass refuses MMA
below sm_80 ("deprecated ... falls back to the FMA path"; the PTX has fma.rn.f32 and no mma.sync),
so there the tests assert the opposite (no mma: a Triton that adds one should make us re-measure),
and the kernels autotune over their own small Turing tiles (2 stages, within 64 KiB of shared memory).
"""

from __future__ import annotations

import pytest
import solution_code

import course  # noqa: F401  (first)
from course import bench, bitnet, flash_configs, gpu_compile, lora
from course import flash_attention as fa

import torch  # noqa: E402
import triton  # noqa: E402

pytestmark = pytest.mark.slow

I32 = "i32"
FWD_SIG = dict(zip(["Q", "K", "V", "O", "L", "sm_scale"], ["*fp16"] * 4 + ["*fp32", "fp32"]))
FWD_SIG.update({n: I32 for n in ["stride_qb", "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn",
                                 "stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_oh", "stride_om",
                                 "H", "N_Q", "N_K"]})
BWD_SIG = dict(zip(["Q", "K", "V", "DO", "L", "Delta"], ["*fp16"] * 4 + ["*fp32", "*fp32"]))
DKDV_SIG = {**BWD_SIG, "DK": "*fp16", "DV": "*fp16", "sm_scale": "fp32", "N_Q": I32, "N_K": I32}
DQ_SIG = {**BWD_SIG, "DQ": "*fp16", "sm_scale": "fp32", "N_Q": I32, "N_K": I32}


def _kept(kind, head_dim=128):
    """The configs the GPU path keeps on both sm_80 and sm_90 (per the compile table), largest tile first."""
    configs = fa.GPU_CONFIGS[kind]
    kept = [c for c in fa.kept_configs(kind, configs, arch=90, head_dim=head_dim)
            if c in fa.kept_configs(kind, configs, arch=80, head_dim=head_dim)]
    return sorted(kept, key=lambda c: (c.block_m * c.block_n, c.num_warps), reverse=True)


def _kept_on_turing(kind, head_dim=128):
    """The Turing tiles the sm_75 table keeps, largest first."""
    kept = fa.kept_configs(kind, flash_configs.TURING_CONFIGS[kind], arch=75, head_dim=head_dim)
    return sorted(kept, key=lambda c: (c.block_m * c.block_n, c.num_warps), reverse=True)


KERNELS = {"fwd": (fa._fwd_kernel, FWD_SIG), "dkdv": (fa._bwd_dkdv_kernel, DKDV_SIG), "dq": (fa._bwd_dq_kernel, DQ_SIG)}


@pytest.mark.parametrize("arch", [90, 80, 75])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_kernel_compiles_for_the_gpu(arch, kind):
    # one kept config per kernel and arch at d = 128, fp16, causal (sm_75: 5-60 s a compile here);
    # compiled specialised as a launch is (16-aligned pointers, strides, lengths), as the per-arch
    # table is; the unaligned variant is a kernel no launch runs (other spills, no pipelining)
    config = (_kept_on_turing(kind) if arch == 75 else _kept(kind))[0]
    kernel, sig = KERNELS[kind]
    consts = {"HEAD_DIM": 128, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "CAUSAL": True}
    aligned = [n for n, t in sig.items() if t.startswith("*") or (t == "i32" and n != "H")]
    report = gpu_compile.compile_report(kernel, sig, consts, arch, num_warps=config.num_warps,
                                        num_stages=config.num_stages, divisible_by_16=aligned)
    name = f"{kind} {flash_configs.config_name(config)}"
    print(f"{name}: {report.summary()}")
    row = next(r for r in _flash_table() if (int(r["arch"]), r["kernel"], r["config"], int(r["head_dim"]), r["dtype"],
                                             str(r["causal"])) == (arch, kind, flash_configs.config_name(config), 128,
                                                                    "float16", "True"))
    then = (int(row["registers"]), int(row["spills"]), int(row["shared_bytes"]))
    assert (report.registers, report.spills, report.shared_bytes) == then, \
        f"{name} sm_{arch}: table says {then}: re-run scripts/compile_flash_configs.py"
    assert report.spills == 0, f"{name} spills on sm_{arch}: {report.summary()}"
    assert report.shared_bytes <= report.shared_limit, f"{name}: {report.summary()}"
    if arch >= 80:
        assert report.has_mma, f"{name}: tl.dot on fp16 without tensor-core instructions on sm_{arch}"
    else:
        assert not report.has_mma, (f"{name}: Triton {triton.__version__} now emits mma on sm_75 (Triton 3.9 took "
                                    "the FMA path): re-run scripts/compile_flash_configs.py --arch 75 and revisit "
                                    "TURING_CONFIGS")


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


# --- LoRA and BitNet: every config measured per arch, pruned by the measurement -----------------
# scripts/compile_lora_bitnet_configs.py compiles every config of both kernels per arch (with
# ptxas's own spill count) into course/results/kernel_configs_lora_bitnet.csv; on a GPU the
# launchers keep only the configs whose row for that arch fits. Here: the CSV covers every config,
# what the pruner keeps fits, and a sample recompiled now agrees with the CSV (a few seconds each).
# Specializations measured per arch: sm_80/sm_90 LoRA in bf16 and fp16 (tensor cores) and fp32 (the IEEE
# path: tl.dot(input_precision="ieee") runs on FMA units by design, every arch), sm_75 LoRA in fp16
# (a T4 has no bf16) over the Turing tiles; BitNet (int8) on all three.

COMPILE_SCRIPT = solution_code.load_script("compile_lora_bitnet_configs")
MY_ARCHS = (75, 80, 90)
LORA_DTYPES = {75: (torch.float16,), 80: (torch.bfloat16, torch.float16, torch.float32),
               90: (torch.bfloat16, torch.float16, torch.float32)}
SAMPLES = [("lora", 90, "bfloat16,multi=True,r=16,aligned"), ("lora", 80, "bfloat16,multi=True,r=16,aligned"),
           ("lora", 90, "float32,multi=False,r=16,aligned"), ("lora", 80, "float32,multi=False,r=16,aligned"),
           ("lora", 75, "float16,multi=True,r=16,aligned"),
           ("bitnet", 90, "even_k=True,aligned"), ("bitnet", 80, "even_k=True,aligned")]
# measured: Triton 3.9 cannot compile an int8 tl.dot for sm_75 at all (its FMA fallback applies
# arith.extf to the int8 operands: "operand #0 must be floating-point-like"), whatever the tile
DOES_NOT_COMPILE = {("bitnet", 75)}


def _measured():
    rows, _ = bench.load_csv(lora.KERNEL_CONFIGS_CSV)
    return {(r["kernel"], int(r["arch"]), str(r["variant"]), r["config"]): r for r in rows}


def _my_cases(arch):
    """(kernel name, variant, config, jit kernel, signature, constexprs) the script compiles for ``sm_<arch>``."""
    return list(COMPILE_SCRIPT.lora_cases(LORA_DTYPES[arch], arch)) + list(COMPILE_SCRIPT.bitnet_cases(arch))


def _autotune_list(name):
    """Every config the launcher's autotuner holds (sm_80+ tiles and Turing tiles), and the Turing ones."""
    module = lora if name == "lora" else bitnet
    return module._gpu_configs() + module._turing_configs(), module._turing_configs()


def _uses_tensor_cores(arch, variant) -> bool:
    """tl.dot reaches tensor cores on sm_80 and up, except in IEEE fp32 (FMA units by design, every arch).
    Below sm_80 Triton 3.9 takes the FMA path for every dtype."""
    return arch >= 80 and not variant.startswith("float32")


def test_every_lora_and_bitnet_config_is_measured_for_each_arch_with_this_triton():
    rows = _measured()
    missing = [(name, arch, variant, lora.config_name(config)) for arch in MY_ARCHS
               for name, variant, config, *_ in _my_cases(arch)
               if (name, arch, variant, lora.config_name(config)) not in rows]
    assert not missing, f"re-run scripts/compile_lora_bitnet_configs.py: no measurement for {missing[:5]}"
    stale = {r["triton"] for r in rows.values()} - {triton.__version__}
    assert not stale, f"measured with Triton {stale}, running {triton.__version__}: re-run the script"


def test_turing_tiles_are_candidates_only_below_sm80():
    for name in ("lora", "bitnet"):
        everything, turing = _autotune_list(name)
        sm80 = [c for c in everything if c not in turing]
        assert {lora.config_name(c) for c in turing}.isdisjoint(lora.config_name(c) for c in sm80)
        assert all(c.num_stages <= 2 for c in turing)  # sm_75 has no cp.async; its 64 KiB fit 2 stages
        assert lora.arch_candidates(everything, turing, arch=75) == turing
        assert lora.arch_candidates(everything, turing, arch=80) == lora.arch_candidates(everything, turing, 90) == sm80
        assert lora.arch_candidates(sm80, turing, arch=75) == sm80  # nothing for this arch: all, never none


@pytest.mark.parametrize("arch", MY_ARCHS)
def test_pruning_keeps_only_configs_measured_to_fit_this_arch(arch):
    rows = _measured()
    for name, variant in sorted({(case[0], case[1]) for case in _my_cases(arch)}):
        everything, turing = _autotune_list(name)
        configs = lora.arch_candidates(everything, turing, arch=arch)
        if (name, arch) in DOES_NOT_COMPILE:
            errors = [rows[(name, arch, variant, lora.config_name(c))]["error"] for c in configs]
            assert all("floating-point-like" in e for e in errors), errors
            with pytest.raises(RuntimeError, match=f"does not compile for sm_{arch}"):
                lora.refuse_if_no_config_compiles(name, configs, lambda c: variant, arch=arch)
            continue
        lora.refuse_if_no_config_compiles(name, configs, lambda c: variant, arch=arch)  # compiles: no refusal
        kept = lora.configs_measured_fit(name, configs, lambda c: variant, arch=arch)
        fitting = [c for c in configs if str(rows[(name, arch, variant, lora.config_name(c))]["fits"]) == "True"]
        assert kept == fitting and fitting, (name, arch, variant)  # each variant keeps at least one config
        for c in kept:
            row = rows[(name, arch, variant, lora.config_name(c))]
            assert row["spill_bytes"] == 0 and row["shared_bytes"] <= gpu_compile.SHARED_LIMIT[arch], row
            if _uses_tensor_cores(arch, variant):
                assert row["tensor_core_instr"], f"{name} {variant} {row['config']}: tl.dot without tensor cores"
            else:
                assert not row["tensor_core_instr"], f"{name} sm_{arch} {variant} {row['config']}: mma where " \
                                                     "Triton 3.9 took the FMA path: re-measure"


def test_int8_dot_does_not_compile_for_sm75_and_the_ternary_launcher_says_so(monkeypatch):
    # live: one Turing tile (a second or two: it fails before code generation). A Triton that compiles
    # it makes this fail: then re-run scripts/compile_lora_bitnet_configs.py --archs 75 and drop the refusal
    name, variant, config, fn, sig, consts = next(case for case in _my_cases(75) if case[0] == "bitnet")
    row = COMPILE_SCRIPT.measure(name, variant, config, fn, sig, consts, 75)
    assert not row["fits"] and "floating-point-like" in row["error"], row
    # what a T4 user sees: the launcher's pruner refuses with a reason instead of Triton's "PassManager::run failed"
    monkeypatch.setattr(lora, "device_arch", lambda: 75)
    p = bitnet.make_problem(1, 64, 256, device="cpu")
    named = {"x_ptr": p["x_codes"], "xs_ptr": p["x_step"], "wp_ptr": p["w_packed"], "y_ptr": p["x_step"], "N": 64,
             "K": 256, "stride_xm": 256, "stride_ym": 64}
    with pytest.raises(RuntimeError, match="does not compile for sm_75.*sm_80 or newer"):
        bitnet._prune(bitnet._gpu_configs() + bitnet._turing_configs(), named)
    monkeypatch.setattr(lora, "device_arch", lambda: 80)  # on sm_80 the same launch keeps its measured configs
    assert bitnet._prune(bitnet._gpu_configs() + bitnet._turing_configs(), named)


@pytest.mark.parametrize("kernel,arch,variant", SAMPLES, ids=[f"{k}-sm{a}-{v.split(',')[0]}" for k, a, v in SAMPLES])
def test_largest_kept_config_compiles_as_measured(kernel, arch, variant):
    cases = [case for case in _my_cases(arch) if case[0] == kernel and case[1] == variant]
    kept = lora.configs_measured_fit(kernel, [case[2] for case in cases], lambda c: variant, arch=arch)
    name, _, config, fn, sig, consts = max(
        (case for case in cases if case[2] in kept),
        key=lambda case: (case[2].kwargs["BLOCK_M"] * case[2].kwargs["BLOCK_N"], case[2].kwargs["BLOCK_K"]))
    now = COMPILE_SCRIPT.measure(name, variant, config, fn, sig, consts, arch)
    print(now)
    before = _measured()[(name, arch, variant, now["config"])]
    assert now["fits"] and now["spill_bytes"] == 0 and now["shared_bytes"] <= gpu_compile.SHARED_LIMIT[arch]
    assert bool(now["tensor_core_instr"]) == _uses_tensor_cores(arch, variant), now["tensor_core_instr"]
    for key in ("registers", "spill_bytes", "shared_bytes", "tensor_core_instr"):
        assert now[key] == before[key], f"{key}: {now[key]} now, {before[key]} in the CSV: re-run the script"


# --- FlashAttention: every config compiled per arch (scripts/compile_flash_configs.py), pruned by it ---
# course/results/kernel_configs_flash.csv holds a compile report per (arch, kernel, config, head dim,
# dtype, causal). Here: the table covers every config at both head dims on sm_80 and sm_90, the
# pruner keeps exactly what it says compiles cleanly, and a sample recompiled now matches it.

from course import bench, flash_configs  # noqa: E402, F811  (bench: may be imported above too)

FLASH_ARCHS = (80, 90)


def _flash_table():
    rows, _ = bench.load_csv(flash_configs.CONFIG_TABLE)
    return rows


def _flash_clean(row) -> bool:
    return (not row["error"] and int(row["spills"]) == 0
            and 0 <= int(row["shared_bytes"]) <= gpu_compile.SHARED_LIMIT[int(row["arch"])])


def test_flash_config_table_covers_every_config_for_sm80_and_sm90_with_this_triton():
    rows = _flash_table()
    have = {(int(r["arch"]), r["kernel"], r["config"], int(r["head_dim"])) for r in rows}
    missing = [(arch, kind, flash_configs.config_name(c), d) for arch in FLASH_ARCHS
               for kind, configs in flash_configs.GPU_CONFIGS.items() for c in configs for d in (64, 128)
               if (arch, kind, flash_configs.config_name(c), d) not in have]
    assert not missing, f"re-run scripts/compile_flash_configs.py: no compile report for {missing[:5]}"
    stale = {str(r["triton"]) for r in rows} - {gpu_compile.triton_version()}
    assert not stale, f"compiled with Triton {stale}, running {gpu_compile.triton_version()}: re-run the script"


@pytest.mark.parametrize("arch", FLASH_ARCHS)
def test_flash_pruning_keeps_exactly_the_configs_the_table_says_compile_cleanly(arch):
    rows = _flash_table()
    for kind, configs in flash_configs.GPU_CONFIGS.items():
        for d in (64, 128):
            mine = [r for r in rows if int(r["arch"]) == arch and r["kernel"] == kind and int(r["head_dim"]) == d]
            clean = [c for c in configs
                     if all(_flash_clean(r) for r in mine if r["config"] == flash_configs.config_name(c))]
            kept = fa.kept_configs(kind, configs, arch=arch, head_dim=d)
            assert kept == clean and kept, (arch, kind, d)  # and each keeps at least one config
            prune = fa._pruner(kind, arch=arch)["early_config_prune"]
            assert [flash_configs._as_block(c) for c in prune(fa._triton_configs(configs), {}, HEAD_DIM=d)] == kept
            # the autotuner's list holds the Turing tiles too: on sm_80 and up they are never kept
            everything = fa._triton_configs(configs + flash_configs.TURING_CONFIGS[kind])
            assert [flash_configs._as_block(c) for c in prune(everything, {}, HEAD_DIM=d)] == kept
    # an arch the table does not cover falls back to the sm_90 rule
    assert fa.kept_configs("fwd", fa.FWD_GPU_CONFIGS, arch=86, head_dim=128) == [
        c for c in fa.FWD_GPU_CONFIGS if not fa.spills_on_sm90("fwd", c, 128)]


# --- sm_75 (Colab T4): fp16 only (no bf16 on Turing), its own small tiles, no tensor cores ---------

def test_flash_config_table_covers_every_turing_candidate_for_sm75_in_fp16_causal_and_not():
    rows = [r for r in _flash_table() if int(r["arch"]) == 75]
    have = {(r["kernel"], r["config"], int(r["head_dim"]), str(r["causal"])) for r in rows if r["dtype"] == "float16"}
    missing = [(kind, flash_configs.config_name(c), d, causal) for kind in flash_configs.GPU_CONFIGS
               for c in flash_configs.candidate_configs(kind, 75) for d in (64, 128) for causal in ("True", "False")
               if (kind, flash_configs.config_name(c), d, causal) not in have]
    assert not missing, f"re-run scripts/compile_flash_configs.py --arch 75 --dtype float16: {missing}"
    assert {r["dtype"] for r in rows} == {"float16"}, "sm_75 has no bf16: the table should not claim it"
    # Triton 3.9 takes the FMA path for tl.dot below sm_80: no row may claim a tensor-core instruction
    assert not [r for r in rows if r["tensor_core"]], "Triton emits mma on sm_75 now: re-measure sm_75"


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("kind", ["fwd", "dkdv", "dq"])
def test_flash_pruning_on_sm75_keeps_only_turing_tiles_measured_clean(kind, d):
    rows = [r for r in _flash_table() if int(r["arch"]) == 75 and r["kernel"] == kind and int(r["head_dim"]) == d]
    candidates = flash_configs.candidate_configs(kind, 75)
    clean = [c for c in candidates if all(_flash_clean(r) for r in rows if r["config"] == flash_configs.config_name(c))]
    kept = fa.kept_configs(kind, candidates, arch=75, head_dim=d)
    assert kept == clean and kept, f"sm_75 {kind} d={d}: kept {kept}, measured clean {clean}"
    for c in kept:  # the claim itself: no spills, within sm_75's 64 KiB, in every variant compiled
        for r in (r for r in rows if r["config"] == flash_configs.config_name(c)):
            assert int(r["spills"]) == 0 and int(r["shared_bytes"]) <= 64 * 1024, r
    # what the launcher's pruner keeps from the whole autotune list: only these (no sm_80+ tile)
    prune = fa._pruner(kind, arch=75)["early_config_prune"]
    everything = fa._triton_configs(fa.GPU_CONFIGS[kind] + flash_configs.TURING_CONFIGS[kind])
    assert [flash_configs._as_block(c) for c in prune(everything, {}, HEAD_DIM=d)] == kept


def _flash_sample(rows):
    """Per arch, one row to recompile: a config the table prunes (if any), else the largest kept one."""
    sample = []
    for arch in FLASH_ARCHS:
        mine = [r for r in rows if int(r["arch"]) == arch and r["dtype"] == "bfloat16" and int(r["head_dim"]) == 128
                and str(r["causal"]) == "True" and not r["error"]]
        pruned = [r for r in mine if not _flash_clean(r)]
        sample.append(min(pruned, key=lambda r: int(r["compile_s"])) if pruned else
                      max(mine, key=lambda r: int(r["shared_bytes"])))
    return sample


def test_flash_config_table_matches_a_sample_compiled_now():
    # a few seconds to a minute per compile on 2 shared cores: two rows, not the whole table
    for row in _flash_sample(_flash_table()):
        bm, bn, warps, stages = (int(x) for x in
                                 row["config"].replace("x", " ").replace("-w", " ").replace("-s", " ").split())
        report = flash_configs.compile_config(row["kernel"], flash_configs.BlockConfig(bm, bn, warps, stages),
                                              head_dim=int(row["head_dim"]), dtype=row["dtype"],
                                              causal=str(row["causal"]) == "True", arch=int(row["arch"]))
        print(row["arch"], row["kernel"], row["config"], report.summary())
        now = (report.registers, report.spills, report.shared_bytes, report.tensor_core_instruction)
        then = (int(row["registers"]), int(row["spills"]), int(row["shared_bytes"]), row["tensor_core"] or "")
        assert now == then, f"{row['kernel']} {row['config']} sm_{row['arch']}: {now} now, {then} in the table: " \
                            "re-run scripts/compile_flash_configs.py"
