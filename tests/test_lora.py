"""course.lora (the fused LoRA kernels, run by the Triton interpreter here) and course.checks.lora.

Each check of notebook 03 is called on a correct implementation (it must pass) and on plausible
wrong ones (it must fail): a check that cannot fail is a defect.
"""

from __future__ import annotations

import math

import pytest
import solution_code
import torch
import torch.nn.functional as F
from torch import nn

import course  # noqa: F401  (first: switches Triton to the interpreter on a CPU)
from course import lora
from course.checks import core
from course.checks import lora as checks

import triton  # noqa: E402  (after course: the interpreter switch)

# float32 kernels vs float64 references: fp32 accumulation over <= 100 terms of O(1) products.
FP32_TOL = 1e-4
# float16 inputs: one fp16 rounding of the output and of the rank-r activations (~5e-4 relative each)
# on outputs of size up to ~10.
FP16_TOL = 3e-2


def operands(m, k, n, r, dtype=torch.float32, seed=0, n_adapters=None):
    gen = torch.Generator().manual_seed(seed)
    lead = () if n_adapters is None else (n_adapters,)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / math.sqrt(k)
    a = torch.randn(*lead, r, k, generator=gen) / math.sqrt(k)
    b = torch.randn(*lead, n, r, generator=gen)
    return [t.to(dtype) for t in (x, w, a, b)]


def passed(check, *args) -> bool:
    check(*args)
    return core.RESULTS[-1].passed


# --- course.lora --------------------------------------------------------------------------------


@pytest.mark.parametrize("m,k,n,r", [(1, 16, 16, 1), (20, 48, 40, 4), (33, 70, 50, 16), (5, 64, 96, 40)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, FP32_TOL), (torch.float16, FP16_TOL)])
def test_fused_kernel_matches_the_unfused_path_on_ragged_shapes(m, k, n, r, dtype, tol):
    x, w, a, b = operands(m, k, n, r, dtype)
    got = lora.lora_linear(x, w, a, b, 0.5)
    want = lora.lora_reference(x.double(), w.double(), a.double(), b.double(), 0.5)
    assert got.dtype == dtype and got.shape == (m, n)
    assert (got.double() - want).abs().max() < tol


def test_fused_kernel_keeps_leading_dimensions():
    x, w, a, b = operands(12, 32, 24, 4)
    x3 = x.reshape(3, 4, 32)
    assert lora.lora_linear(x3, w, a, b, 2.0).shape == (3, 4, 24)
    assert torch.allclose(lora.lora_linear(x3, w, a, b, 2.0).reshape(12, 24), lora.lora_linear(x, w, a, b, 2.0))


@pytest.mark.parametrize("group_rows", [True, False])
def test_multi_adapter_kernel_matches_the_per_adapter_loop(group_rows):
    x, w, a, b = operands(40, 48, 40, 8, n_adapters=3)
    ids = torch.randint(-1, 3, (40,), generator=torch.Generator().manual_seed(1))
    for scale in (0.5, [0.5, 1.0, 2.0]):
        got = lora.lora_linear_multi(x, w, a, b, ids, scale, group_rows=group_rows)
        want = lora.lora_multi_reference(x.double(), w.double(), a.double(), b.double(), ids, scale)
        assert (got.double() - want).abs().max() < FP32_TOL


def test_multi_adapter_rows_without_adapter_get_the_base_product_only():
    x, w, a, b = operands(5, 16, 16, 2, n_adapters=2)
    got = lora.lora_linear_multi(x, w, a, b, torch.full((5,), -1), 3.0)
    assert torch.allclose(got, x @ w.T, atol=1e-5)


def test_bf16_is_refused_on_the_cpu_interpreter_with_the_reason():
    x, w, a, b = operands(4, 16, 16, 2, torch.bfloat16)
    with pytest.raises(TypeError, match="interpreter"):
        lora.lora_linear(x, w, a, b, 1.0)


@pytest.mark.parametrize("change,error,words", [
    (lambda x, w, a, b: (x[:, :-1], w, a, b), ValueError, "in_features"),
    (lambda x, w, a, b: (x, w, a.T, b), ValueError, "lora_A"),
    (lambda x, w, a, b: (x, w, a, b.T), ValueError, "lora_B"),
    (lambda x, w, a, b: (x, w[0], a, b), ValueError, "weight must be 2-D"),
    (lambda x, w, a, b: (x, w.half(), a, b), TypeError, "weight has dtype"),
    (lambda x, w, a, b: (x.double(), w.double(), a.double(), b.double()), TypeError, "dtype"),
    (lambda x, w, a, b: (x.long(), w, a, b), TypeError, "dtype"),
    (lambda x, w, a, b: (x.numpy(), w, a, b), TypeError, "x must be a torch.Tensor"),
])
def test_fused_kernel_rejects_bad_operands_naming_the_argument(change, error, words):
    with pytest.raises(error, match=words):
        lora.lora_linear(*change(*operands(4, 16, 16, 2)), 1.0)


def test_rank_above_the_register_budget_is_refused():
    x, w, a, b = operands(4, 16, 16, lora.MAX_RANK + 1)
    with pytest.raises(ValueError, match="rank r must be in"):
        lora.lora_linear(x, w, a, b, 1.0)
    assert lora.lora_reference(x, w, a, b, 1.0).shape == (4, 16)  # the PyTorch path has no such limit


def test_multi_adapter_validation():
    x, w, a, b = operands(4, 16, 16, 2, n_adapters=2)
    with pytest.raises(ValueError, match=r"adapter_ids must lie in \[-1, 2\)"):
        lora.lora_linear_multi(x, w, a, b, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="one id per row"):
        lora.lora_linear_multi(x, w, a, b, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one id per row"):
        lora.lora_linear_multi(x, w, a, b, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="2 numbers"):
        lora.lora_linear_multi(x, w, a, b, torch.tensor([0, 1, 0, 1]), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="lora_Bs must be"):
        lora.lora_linear_multi(x, w, a, b[:1], torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="finite"):
        lora.lora_linear(x, w, a[0], b[0], math.nan)


def test_count_matmuls_counts_products_only():
    x, w, a, b = operands(4, 16, 16, 2)
    assert lora.count_matmuls(lambda: F.linear(x, w)) == 1
    assert lora.count_matmuls(lambda: lora.lora_reference(x, w, a, b, 1.0)) == 3
    assert lora.count_matmuls(lambda: x + 1) == 0
    with pytest.raises(TypeError, match="callable"):
        lora.count_matmuls(42)


def test_performance_bars_compute_ratios_and_verdicts():
    rows = [{"name": n, "tokens": t, "ms": ms} for n, t, ms in [
        ("base", 8192, 1.0), ("fused", 8192, 1.05), ("unfused", 16, 0.03), ("fused", 16, 0.02),
        ("fused_multi_1", 16, 0.02), ("fused_multi_8", 16, 0.04)]]
    bars = {(b["bar"], b["tokens"]): b for b in lora.performance_bars(rows)}
    assert bars[("fused / base (cuBLAS)", 8192)]["ratio"] == pytest.approx(1.05) and bars[("fused / base (cuBLAS)", 8192)]["met"]
    assert bars[("unfused / fused", 16)]["ratio"] == pytest.approx(1.5) and bars[("unfused / fused", 16)]["met"]
    assert bars[("8 adapters / 1 adapter", 16)]["ratio"] == pytest.approx(2.0)
    assert not bars[("8 adapters / 1 adapter", 16)]["met"]
    assert lora.performance_bars([]) == []


def test_cpu_benchmark_times_the_pytorch_paths_only():
    rows = lora.benchmark((4,), d=32, r=4, repeats=1, warmup=0)
    assert [r["name"] for r in rows] == ["base", "unfused", "merged"]
    assert all(r["ms"] > 0 and r["tokens"] == 4 for r in rows)


def test_make_problem_validates_sizes():
    with pytest.raises(ValueError, match="tokens must be a positive int"):
        lora.make_problem(0, 16, 2)
    p = lora.make_problem(6, 16, 2, n_adapters=3, device="cpu")
    assert p["adapter_ids"].tolist() == [0, 1, 2, 0, 1, 2]


# --- the checks: pass on correct code, fail on plausible mistakes ----------------------------


def memory_ok(n, t, *, mixed_precision=False):
    if isinstance(n, bool) or not isinstance(n, int) or not isinstance(t, int) or not 0 <= t <= n:
        raise ValueError("bad counts")
    wb, gb, ob = (2, 2, 12) if mixed_precision else (4, 4, 8)
    return {"weights": wb * n, "gradients": gb * t, "optimizer": ob * t, "total": wb * n + (gb + ob) * t}


def memory_without_master_copy(n, t, *, mixed_precision=False):
    out = memory_ok(n, t, mixed_precision=mixed_precision)
    if mixed_precision:
        out["optimizer"] = 8 * t
        out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    return out


def test_training_memory_check():
    assert passed(checks.training_memory, memory_ok)
    assert not passed(checks.training_memory, memory_without_master_copy)
    assert not passed(checks.training_memory, lambda n, t, mixed_precision=False: memory_ok(n, n, mixed_precision=mixed_precision))


class GoodLoRA(nn.Module):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        return y if self.merged else y + self.scaling * (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T


class UnscaledLoRA(GoodLoRA):
    def forward(self, x):
        return self.base(x) + (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T if not self.merged else self.base(x)


class TrainableBaseLoRA(GoodLoRA):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        self.base.requires_grad_(True)


class DropoutEverywhereLoRA(GoodLoRA):
    def forward(self, x):
        x = self.dropout(x)
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


class SwappedInitLoRA(GoodLoRA):
    def __init__(self, base, r=8, alpha=16.0, dropout=0.0):
        super().__init__(base, r, alpha, dropout)
        with torch.no_grad():
            self.lora_B.normal_()
            self.lora_A.zero_()


@pytest.mark.parametrize("cls,ok", [(GoodLoRA, True), (UnscaledLoRA, False), (TrainableBaseLoRA, False),
                                    (DropoutEverywhereLoRA, False), (SwappedInitLoRA, False)])
def test_lora_linear_check(cls, ok):
    assert passed(checks.lora_linear, cls) is ok


def inject_ok(model, r=8, alpha=16.0, targets=("q_proj", "v_proj"), dropout=0.0):
    model.requires_grad_(False)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]
    if set(targets) - {n.rsplit(".", 1)[-1] for n, _ in found}:
        raise ValueError("unknown target")
    for name, module in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, GoodLoRA(module, r, alpha, dropout))
    return [n for n, _ in found]


def inject_without_freezing(model, r=8, alpha=16.0, targets=("q_proj", "v_proj"), dropout=0.0):
    names = inject_ok(model, r, alpha, targets, dropout)
    model.embed.requires_grad_(True)
    return names


def inject_every_linear(model, r=8, alpha=16.0, targets=("q_proj", "v_proj"), dropout=0.0):
    return inject_ok(model, r, alpha, ("q_proj", "k_proj", "v_proj", "out_proj"), dropout)


@pytest.mark.parametrize("fn,ok", [(inject_ok, True), (inject_without_freezing, False), (inject_every_linear, False)])
def test_inject_lora_check(fn, ok):
    assert passed(checks.inject_lora, fn) is ok


def merge_ok(layer):
    if layer.merged:
        raise RuntimeError("merged")
    with torch.no_grad():
        layer.base.weight += layer.scaling * layer.lora_B @ layer.lora_A
    layer.merged = True


def unmerge_ok(layer):
    if not layer.merged:
        raise RuntimeError("not merged")
    with torch.no_grad():
        layer.base.weight -= layer.scaling * layer.lora_B @ layer.lora_A
    layer.merged = False


def merge_unscaled(layer):
    if layer.merged:
        raise RuntimeError("merged")
    with torch.no_grad():
        layer.base.weight += layer.lora_B @ layer.lora_A
    layer.merged = True


def merge_without_flag(layer):
    with torch.no_grad():
        layer.base.weight += layer.scaling * layer.lora_B @ layer.lora_A


@pytest.mark.parametrize("merge,ok", [(merge_ok, True), (merge_unscaled, False), (merge_without_flag, False)])
def test_merge_unmerge_check(merge, ok):
    assert passed(checks.merge_unmerge, merge, unmerge_ok) is ok


def phi_ok(m1, m2, i, j):
    if not 1 <= i <= min(m1.shape) or not 1 <= j <= min(m2.shape):
        raise ValueError("bad i, j")
    u1 = torch.linalg.svd(m1.double(), full_matrices=False).U[:, :i]
    u2 = torch.linalg.svd(m2.double(), full_matrices=False).U[:, :j]
    return float((u1.T @ u2).square().sum() / min(i, j))


def phi_unnormalised(m1, m2, i, j):
    return phi_ok(m1, m2, i, j) * min(i, j)


def phi_right_vectors(m1, m2, i, j):
    if not 1 <= i <= min(m1.shape) or not 1 <= j <= min(m2.shape):
        raise ValueError("bad i, j")
    v1 = torch.linalg.svd(m1.double(), full_matrices=False).Vh[:i].T
    v2 = torch.linalg.svd(m2.double(), full_matrices=False).Vh[:j].T
    return float((v1.T @ v2).square().sum() / min(i, j))


@pytest.mark.parametrize("fn,ok", [(phi_ok, True), (phi_unnormalised, False), (phi_right_vectors, False)])
def test_subspace_similarity_check(fn, ok):
    assert passed(checks.subspace_similarity, fn) is ok


def fused_without_scale(x, w, a, b, scale):
    return lora.lora_linear(x, w, a, b, 1.0)


def fused_stub(x, w, a, b, scale):
    raise NotImplementedError("Exercise 3.6: Fused LoRA forward in Triton")


@pytest.mark.parametrize("fn,ok", [(lora.lora_linear, True), (fused_without_scale, False), (fused_stub, False)])
def test_fused_lora_check(fn, ok):
    assert passed(checks.fused_lora, fn) is ok


def test_fused_lora_check_reports_a_stub_inside_a_kernel_as_not_implemented():
    import triton

    @triton.jit
    def stub_kernel(x_ptr):
        raise NotImplementedError("Exercise 3.6: Fused LoRA forward in Triton")

    def fn(x, w, a, b, scale):
        lora.check_lora_args(x, w, a, b, kernel=True)
        stub_kernel[(1,)](x)

    checks.fused_lora(fn)
    assert not core.RESULTS[-1].passed and "not implemented yet" in core.RESULTS[-1].message


def multi_minus_one_as_index(x, w, a, b, ids, scale):
    down = torch.einsum("mk,mrk->mr", x, a[ids])
    return x @ w.T + scale * torch.einsum("mr,mnr->mn", down, b[ids])


@pytest.mark.parametrize("fn,ok", [(lora.lora_multi_reference, True), (multi_minus_one_as_index, False)])
def test_multi_lora_check(fn, ok):
    assert passed(checks.multi_lora, fn) is ok


def test_benchmark_rows_include_the_kernels_when_asked():
    rows = lora.benchmark((4,), d=32, r=4, n_adapters=2, include_triton=True, repeats=1, warmup=0)
    assert [r["name"] for r in rows] == ["base", "unfused", "merged", "fused", "fused_multi_1", "fused_multi_2",
                                         "unfused_multi_2"]


def test_gpu_script_refuses_to_time_the_interpreter(capsys):
    script = solution_code.load_script("bench_lora")
    if course.on_gpu():
        pytest.skip("a GPU is present: the script would run")
    assert script.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["lora_rank_sweep.csv", "lora_adapters.csv", "lora_low_rank.csv"])
def test_seed_results_carry_their_seeds_and_setting(name):
    # notebook 03 reads these (scripts/seeds_lora.py): at least 3 seeds, and the header says where and how
    from course import bench

    rows, tags = bench.load_csv(lora.RESULTS_CSV.with_name(name))
    seeds = sorted({row["seed"] for row in rows})
    assert len(seeds) >= 3 and tags["seeds"] == " ".join(map(str, seeds))
    for key in ("cpu_model", "torch_cpu_capability", "threads", "torch", "date", "config", "command"):
        assert tags.get(key), key
    group = "run" if "run" in rows[0] else "adapter" if "adapter" in rows[0] else "proj"
    per_group = {}
    for row in rows:
        per_group.setdefault(row[group], []).append(row["seed"])
    assert all(sorted(s) == seeds for s in per_group.values())


def test_notebook_defs_loads_definitions_without_running_cells():
    defs = solution_code.load_script("notebook_defs")
    namespace = defs.load("solutions/03_lora.ipynb", tokenizer=None, K=8)  # K: a default argument
    assert {"LoRALinear", "inject_lora", "finetune", "evaluate", "subspace_similarity"} <= set(namespace)
    assert "runs" not in namespace and "pretrained" not in namespace  # no training or loading ran


# --- autotuning: one tuned config per power-of-two bucket of M ---------------------------------


def _autotune_key(tuner, args, kwargs):
    """The cache key Triton's Autotuner.run computes for a launch (its code, Triton 3.9): the values of
    the ``key`` arguments, then the dtype of every tensor argument."""
    named = {**dict(zip(tuner.arg_names, args)), **kwargs}
    named = {k: v for k, v in named.items() if k in tuner.arg_names}
    return tuple([named[k] for k in tuner.keys if k in named] + [str(v.dtype) for v in named.values()
                                                                   if hasattr(v, "dtype")])


def _compiled_launch_args(monkeypatch, launch):
    """Run ``launch`` as in compiled mode, catching the args the autotuned kernel is called with."""
    seen = []

    class Spy:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((args, kwargs))

    monkeypatch.setattr(lora.runtime, "triton_mode", lambda: "compiled")
    monkeypatch.setattr(lora.runtime, "require_kernel_device", lambda *a, **k: None)
    monkeypatch.setattr(lora, "_tuned", lambda: Spy())
    launch()
    return seen[-1]


def test_m_bucket_is_the_next_power_of_two_and_validates():
    assert [lora.m_bucket(m) for m in (1, 2, 3, 33, 64, 65, 8192)] == [1, 2, 4, 64, 64, 128, 8192]
    for bad in (0, -3, True, 2.0):
        with pytest.raises(ValueError, match="positive int"):
            lora.m_bucket(bad)


def test_token_counts_in_one_bucket_share_one_autotune_key(monkeypatch):
    tuner = triton.autotune(lora._gpu_configs(), key=lora.TUNE_KEY)(lora._lora_fused_kernel)  # as _tuned builds it
    keys = {}
    for m in (33, 60, 64, 65):
        x, w, a, b = operands(m, 32, 16, 4)
        args, kwargs = _compiled_launch_args(monkeypatch, lambda: lora.lora_linear(x, w, a, b, 1.0))
        keys[m] = _autotune_key(tuner, args, kwargs)
    assert "M" not in tuner.keys and keys[33] == keys[60] == keys[64] != keys[65]


def test_per_arch_pruning_keeps_what_was_measured_to_fit(monkeypatch):
    configs = lora._gpu_configs()
    names = [lora.config_name(c) for c in configs]
    fits = {("lora", 90, "v", names[0]): False, ("lora", 90, "v", names[1]): True}
    monkeypatch.setattr(lora, "measured_fits", lambda: fits)
    kept = lora.configs_measured_fit("lora", configs, lambda c: "v", arch=90)
    assert configs[0] not in kept and configs[1] in kept and len(kept) == len(configs) - 1  # unmeasured: kept
    assert lora.configs_measured_fit("lora", configs, lambda c: "v", arch=75) == configs  # unknown arch: all
    everything_fails = {("lora", 90, "v", n): False for n in names}
    monkeypatch.setattr(lora, "measured_fits", lambda: everything_fails)
    assert lora.configs_measured_fit("lora", configs, lambda c: "v", arch=90) == configs  # never none


def test_lora_variant_judges_a_rank_by_the_next_measured_rank_tile():
    assert lora.lora_variant(torch.float16, True, 16, True) == "float16,multi=True,r=16,aligned"
    assert lora.lora_variant(torch.bfloat16, False, 32, False) == (
        f"bfloat16,multi=False,r>{lora.MEASURED_RANKS[-1]},unaligned")


def test_a_launch_is_aligned_when_its_pointers_and_sizes_are_multiples_of_16():
    x = torch.zeros(64, 32)
    named = {name: x for name in lora.ALIGNED_ARGS["lora"] if name.endswith("_ptr")}
    named.update({name: 32 for name in lora.ALIGNED_ARGS["lora"] if not name.endswith("_ptr")})
    assert lora.launch_is_aligned("lora", named)
    assert not lora.launch_is_aligned("lora", {**named, "K": 40})  # 40 is not a multiple of 16
    assert not lora.launch_is_aligned("lora", {**named, "x_ptr": x.view(-1)[1:]})  # 4 bytes past an aligned address
