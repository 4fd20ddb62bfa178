"""course.bitnet (quantizers, packing, the packed ternary kernel in the interpreter) and course.checks.bitnet.

Each check of notebook 04 is called on a correct implementation (it must pass) and on plausible
wrong ones (it must fail): a check that cannot fail is a defect.
"""

from __future__ import annotations

import pytest
import solution_code
import torch
import torch.nn.functional as F
from torch import nn

import course  # noqa: F401  (first: switches Triton to the interpreter on a CPU)
from course import bitnet
from course.checks import bitnet as checks
from course.checks import core

import triton  # noqa: E402  (after course: the interpreter switch)


def passed(check, *args) -> bool:
    check(*args)
    return core.RESULTS[-1].passed


def ternary(shape, seed=0):
    return torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


# --- packing ------------------------------------------------------------------------------------

EDGE_SHAPES = [(1, 1), (1, 15), (1, 16), (2, 17), (3, 31), (4, 32), (2, 3, 33), (5, 100)]


@pytest.mark.parametrize("shape", EDGE_SHAPES)
@pytest.mark.parametrize("fill", [None, -1, 0, 1])
def test_two_bit_packing_round_trips_random_and_constant_weights(shape, fill):
    w = ternary(shape) if fill is None else torch.full(shape, fill, dtype=torch.int8)
    packed = bitnet.pack_ternary(w)
    assert packed.dtype == torch.int32 and packed.shape == (*shape[:-1], -(-shape[-1] // 16))
    assert torch.equal(bitnet.unpack_ternary(packed, shape[-1]), w)


@pytest.mark.parametrize("shape", EDGE_SHAPES)
@pytest.mark.parametrize("fill", [None, -1, 0, 1])
def test_base3_packing_round_trips_random_and_constant_weights(shape, fill):
    w = ternary(shape) if fill is None else torch.full(shape, fill, dtype=torch.int8)
    packed = bitnet.pack_base3(w)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-w.numel() // 5)
    assert torch.equal(bitnet.unpack_base3(packed, w.numel()).reshape(shape), w)


def test_two_bit_layout_is_code_w_plus_one_at_bits_2i():
    w = torch.zeros(1, 16, dtype=torch.int8)
    w[0, 0], w[0, 1], w[0, 15] = 1, -1, 1  # codes 2, 0, 2; the last sets the int32 sign bit
    expected = 2 | (0 << 2) | sum(1 << (2 * i) for i in range(2, 15)) | (2 << 30)
    assert bitnet.pack_ternary(w).item() == expected - 2**32  # same bits, read as a signed int32


def test_padding_of_a_partial_word_is_a_zero_weight():
    packed = bitnet.pack_ternary(torch.full((1, 3), -1, dtype=torch.int8))
    fields = [(packed.item() >> (2 * i)) & 3 for i in range(16)]
    assert fields == [0, 0, 0] + [1] * 13


def test_base3_uses_1_6_bits_per_weight_and_the_first_trit_lowest():
    w = torch.tensor([1, 0, -1, 0, 0], dtype=torch.int8)  # codes 2, 1, 0, 1, 1
    assert bitnet.pack_base3(w).item() == 2 + 1 * 3 + 0 * 9 + 1 * 27 + 1 * 81
    assert bitnet.pack_base3(ternary((1000,))).numel() * 8 / 1000 == pytest.approx(1.6)


@pytest.mark.parametrize("fn,arg,error", [
    (bitnet.pack_ternary, torch.tensor([[0.5, 1.0]]), TypeError),
    (bitnet.pack_ternary, torch.tensor([[2, 0]], dtype=torch.int8), ValueError),
    (bitnet.pack_ternary, torch.tensor([[True]]), TypeError),
    (bitnet.pack_ternary, torch.zeros(2, 0, dtype=torch.int8), ValueError),
    (bitnet.pack_base3, torch.tensor([-2, 0], dtype=torch.int8), ValueError),
    (bitnet.pack_base3, [1, 0, -1], TypeError),
])
def test_packing_rejects_what_is_not_ternary(fn, arg, error):
    with pytest.raises(error):
        fn(arg)


def test_unpacking_validates_its_arguments():
    packed = bitnet.pack_ternary(ternary((2, 20)))
    with pytest.raises(ValueError, match="needs 3 words per row"):
        bitnet.unpack_ternary(packed, 40)
    with pytest.raises(TypeError, match="int32"):
        bitnet.unpack_ternary(packed.to(torch.int64), 20)
    with pytest.raises(ValueError, match="code 3"):
        bitnet.unpack_ternary(torch.full((1, 1), -1, dtype=torch.int32), 16)
    with pytest.raises(ValueError, match="need 3 bytes, got 2"):
        bitnet.unpack_base3(bitnet.pack_base3(ternary((7,))), 11)
    with pytest.raises(ValueError, match="< 243"):
        bitnet.unpack_base3(torch.tensor([250], dtype=torch.uint8), 5)


# --- quantizers ---------------------------------------------------------------------------------


def test_absmax_quantization_is_per_row_and_survives_zero_rows():
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [100.0, 50.0, -25.0]])
    codes, step = bitnet.quantize_activations(x)
    assert codes.dtype == torch.int8 and step.shape == (3, 1)
    assert codes[0].tolist() == [64, -127, 32] and codes[1].tolist() == [0, 0, 0] and codes[2, 0] == 127
    # one rounding to the nearest code: at most half a step of error per element
    assert ((codes * step - x).abs() <= step / 2 + 1e-6).all()


def test_ternarize_uses_absmean_and_clips():
    codes, gamma = bitnet.ternarize(torch.tensor([[0.1, -0.5, 2.0, 0.0]]))
    assert gamma.item() == pytest.approx(0.65)
    assert codes.tolist() == [[0, -1, 1, 0]]
    zeros, scale = bitnet.ternarize(torch.zeros(2, 2))
    assert zeros.abs().sum() == 0 and scale == 0


# --- the kernel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,k", [(1, 16, 16), (1, 40, 80), (3, 33, 100), (17, 48, 64), (16, 70, 257)])
def test_kernel_is_bit_exact_against_the_reference(m, n, k):
    p = bitnet.make_problem(m, n, k, device="cpu", seed=m + n + k)
    got = bitnet.ternary_matmul(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], k)
    want = bitnet.ternary_matmul_reference(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], k)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_kernel_equals_the_dequantized_float_product():
    p = bitnet.make_problem(4, 32, 96, device="cpu")
    got = bitnet.ternary_matmul(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], 96)
    w = bitnet.unpack_ternary(p["w_packed"], 96).double() * p["w_scale"]
    want = (p["x_codes"].double() * p["x_step"].double()) @ w.T
    # float32 scaling of exact integers: relative error of a few ulps (1e-6) on values of size ~1
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("change,error,words", [
    (lambda p: (p["x_codes"].float(), p["x_step"], p["w_packed"], p["w_scale"], 32), TypeError, "x_codes must be int8"),
    (lambda p: (p["x_codes"], p["x_step"], p["w_packed"].long(), p["w_scale"], 32), TypeError, "int32"),
    (lambda p: (p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], 48), ValueError, "k must equal"),
    (lambda p: (p["x_codes"], p["x_step"], p["w_packed"][:, :1], p["w_scale"], 32), ValueError, "w_packed must be"),
    (lambda p: (p["x_codes"], p["x_step"][:1], p["w_packed"], p["w_scale"], 32), ValueError, "x_step"),
    (lambda p: (p["x_codes"], p["x_step"].double(), p["w_packed"], p["w_scale"], 32), ValueError, "x_step"),
    (lambda p: (p["x_codes"][0], p["x_step"], p["w_packed"], p["w_scale"], 32), ValueError, "2-D"),
    (lambda p: (p["x_codes"], p["x_step"], p["w_packed"], "1.0", 32), TypeError, "w_scale"),
])
def test_kernel_rejects_unsupported_operands_with_a_clear_error(change, error, words):
    p = bitnet.make_problem(2, 16, 32, device="cpu")
    with pytest.raises(error, match=words):
        bitnet.ternary_matmul(*change(p))


def test_weight_bytes_and_speedups():
    assert bitnet.weight_bytes(16, "2bit") == 4 and bitnet.weight_bytes(10, "base3") == 2
    with pytest.raises(ValueError, match="format must be one of"):
        bitnet.weight_bytes(16, "3bit")
    rows = [{"name": n, "batch": 1, "size": 4096, "ms": ms}
            for n, ms in [("torch_matmul", 0.03), ("ternary_kernel", 0.01), ("quantize+kernel", 0.02)]]
    (row,) = bitnet.speedups(rows)
    assert row["speedup"] == pytest.approx(3.0) and row["speedup_with_quantize"] == pytest.approx(1.5)


# --- the checks: pass on correct code, fail on plausible mistakes ----------------------------


def absmax_global_scale(x, eps=1e-5):
    step = x.abs().max().float().clamp(min=eps) / 127 * torch.ones(*x.shape[:-1], 1)
    return (x / step).round().clamp(-127, 127).to(torch.int8), step


def absmax_truncating(x, eps=1e-5):
    codes, step = bitnet.quantize_activations(x, eps)
    return (x.float() / step).trunc().clamp(-127, 127).to(torch.int8), step


@pytest.mark.parametrize("fn,ok", [(bitnet.quantize_activations, True), (absmax_global_scale, False),
                                   (absmax_truncating, False)])
def test_absmax_check(fn, ok):
    assert passed(checks.absmax_quantize, fn) is ok


def binarize_ok(w):
    w = w.detach()
    return torch.where(w > w.mean(), 1, -1).to(torch.int8), w.abs().mean()


def binarize_around_zero(w):
    return torch.where(w > 0, 1, -1).to(torch.int8), w.abs().mean()


def binarize_torch_sign(w):
    return torch.sign(w - w.mean()).to(torch.int8), w.abs().mean()


@pytest.mark.parametrize("fn,ok", [(binarize_ok, True), (binarize_around_zero, False), (binarize_torch_sign, False)])
def test_binarize_check(fn, ok):
    assert passed(checks.binarize, fn) is ok


def ternarize_absmax(w, eps=1e-5):
    g = w.abs().max()
    return (w / (g + eps)).round().clamp(-1, 1).to(torch.int8), g


@pytest.mark.parametrize("fn,ok", [(bitnet.ternarize, True), (ternarize_absmax, False)])
def test_ternarize_check(fn, ok):
    assert passed(checks.ternarize, fn) is ok


class GoodBitLinear(nn.Linear):
    def __init__(self, d_in, d_out, bias=False, ternary=False):
        super().__init__(d_in, d_out, bias=bias)
        self.ternary = ternary
        self.norm = nn.LayerNorm(d_in, elementwise_affine=False)

    def quantized_weight(self):
        codes, scale = (bitnet.ternarize if self.ternary else binarize_ok)(self.weight)
        return self.weight + (codes.to(self.weight.dtype) * scale - self.weight).detach()

    def forward(self, x):
        x = self.norm(x)
        codes, step = bitnet.quantize_activations(x)
        return F.linear(x + (codes * step - x).detach(), self.quantized_weight(), self.bias)


class NoStraightThrough(GoodBitLinear):
    def forward(self, x):
        x = self.norm(x)
        codes, step = bitnet.quantize_activations(x)
        w_codes, scale = (bitnet.ternarize if self.ternary else binarize_ok)(self.weight)
        return F.linear(codes * step, w_codes * scale, self.bias)


class NoLayerNorm(GoodBitLinear):
    def forward(self, x):
        codes, step = bitnet.quantize_activations(x)
        return F.linear(x + (codes * step - x).detach(), self.quantized_weight(), self.bias)


@pytest.mark.parametrize("cls,ok", [(GoodBitLinear, True), (NoStraightThrough, False), (NoLayerNorm, False)])
def test_bit_linear_check(cls, ok):
    assert passed(checks.bit_linear, cls) is ok


def pack_padding_with_minus_one(w):
    k = w.shape[-1]
    padded = F.pad(w.to(torch.int8), (0, (-k) % 16), value=-1)
    return bitnet.pack_ternary(padded)


@pytest.mark.parametrize("pack,ok", [(bitnet.pack_ternary, True), (pack_padding_with_minus_one, False)])
def test_pack_ternary_check(pack, ok):
    assert passed(checks.pack_ternary, pack, bitnet.unpack_ternary) is ok


def pack_base3_high_digit_first(w):
    codes = F.pad(w.reshape(-1).to(torch.int32) + 1, (0, (-w.numel()) % 5), value=1).reshape(-1, 5)
    value = torch.zeros(codes.shape[0], dtype=torch.int32)
    for i in range(5):
        value = value * 3 + codes[:, i]
    return value.to(torch.uint8)


@pytest.mark.parametrize("pack,ok", [(bitnet.pack_base3, True), (pack_base3_high_digit_first, False)])
def test_pack_base3_check(pack, ok):
    assert passed(checks.pack_base3, pack, bitnet.unpack_base3) is ok


def matmul_unscaled(x_codes, x_step, w_packed, w_scale, k):
    bitnet.check_ternary_matmul_args(x_codes, x_step, w_packed, w_scale, k)
    return (x_codes.double() @ bitnet.unpack_ternary(w_packed, k).double().T).float()


def matmul_float_path(x_codes, x_step, w_packed, w_scale, k):
    bitnet.check_ternary_matmul_args(x_codes, x_step, w_packed, w_scale, k)
    return (x_codes.float() * x_step.reshape(-1, 1)) @ (bitnet.unpack_ternary(w_packed, k).float() * w_scale).T


@pytest.mark.parametrize("fn,ok", [(bitnet.ternary_matmul, True), (matmul_unscaled, False),
                                   (matmul_float_path, False)])
def test_ternary_matmul_check_demands_bit_exactness(fn, ok):
    assert passed(checks.ternary_matmul, fn) is ok


def test_benchmark_rows_name_each_path_and_its_weight_bytes():
    rows = bitnet.benchmark([1], [32], repeats=1, warmup=0)
    assert [r["name"] for r in rows] == ["torch_matmul", "ternary_kernel", "quantize+kernel"]
    assert rows[0]["weight_bytes"] == 32 * 32 * 2 and rows[1]["weight_bytes"] == 32 * 2 * 4  # bf16 vs 2 words a row


def test_gpu_script_refuses_to_time_the_interpreter(capsys):
    script = solution_code.load_script("bench_bitnet")
    if course.on_gpu():
        pytest.skip("a GPU is present: the script would run")
    assert script.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_seed_results_carry_their_seeds_and_setting():
    # notebook 04 reads this (scripts/seeds_bitnet.py): at least 3 seeds, and the header says where and how
    from course import bench

    rows, tags = bench.load_csv(bitnet.RESULTS_CSV.with_name("bitnet_training.csv"))
    seeds = sorted({row["seed"] for row in rows})
    assert len(seeds) >= 3 and tags["seeds"] == " ".join(map(str, seeds))
    for key in ("cpu_model", "torch_cpu_capability", "threads", "torch", "date", "config", "command"):
        assert tags.get(key), key
    last = max(row["step"] for row in rows)
    final = {}
    for row in rows:
        if row["step"] == last:
            final.setdefault(row["model"], []).append(row["seed"])
    assert set(final) == {"fp32", "BitNet (binary)", "BitNet b1.58 (ternary)", "bigram (counted)"}
    assert all(sorted(s) == seeds for s in final.values())


# --- the compiled path's autotuning (simulated on the CPU) -------------------------------------


def test_token_counts_in_one_bucket_share_one_autotune_key(monkeypatch):
    from test_lora import _autotune_key

    seen = []

    class Spy:  # stands for the autotuned kernel: records what a compiled launch would pass it
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((args, kwargs))

    monkeypatch.setattr(bitnet.runtime, "triton_mode", lambda: "compiled")
    monkeypatch.setattr(bitnet.runtime, "require_kernel_device", lambda *a, **k: None)
    monkeypatch.setattr(bitnet, "_tuned", lambda: Spy())
    tuner = triton.autotune(bitnet._gpu_configs(), key=bitnet.TUNE_KEY)(bitnet._ternary_matmul_kernel)
    keys = {}
    for m in (9, 16, 17):
        p = bitnet.make_problem(m, 64, 64, device="cpu")
        bitnet.ternary_matmul(p["x_codes"], p["x_step"], p["w_packed"], p["w_scale"], 64)
        keys[m] = _autotune_key(tuner, *seen[-1])
    assert "M" not in tuner.keys and keys[9] == keys[16] != keys[17]


def test_gpu_configs_compile_as_int8_dots():
    # a compiled int8 tl.dot needs K >= 32 per step, and tl.arange needs powers of two (BLOCK_K // 16 too)
    for c in bitnet._gpu_configs():
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        assert bk >= 32 and bm >= 16 and bn >= 16, c
        assert all(v & (v - 1) == 0 for v in (bm, bn, bk)), c


def test_pruning_judges_each_config_by_its_own_k_mask(monkeypatch):
    seen = []
    monkeypatch.setattr(bitnet, "configs_measured_fit",
                        lambda kernel, configs, variant_of: seen.extend(variant_of(c) for c in configs) or configs)
    configs = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": bk}) for bk in (128, 256)]
    p = bitnet.make_problem(1, 32, 384, device="cpu")
    named = {"x_ptr": p["x_codes"], "xs_ptr": p["x_step"], "wp_ptr": p["w_packed"], "y_ptr": p["x_step"], "N": 32,
             "K": 384, "stride_xm": 384, "stride_ym": 32}
    bitnet._prune(configs, named)
    assert seen == ["even_k=True,aligned", "even_k=False,aligned"]  # 384 = 3 x 128, not a multiple of 256
