"""Notebook 05 (speculative decoding): its checks, reference helpers and committed weights.

The check tests take the learner-facing code from the solution notebook itself (one copy of it)
and feed each check the solution, the student stub, and deliberately wrong variants made by
editing the solution's source. Statistical checks use fixed seeds, so every verdict here is
deterministic.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import course  # noqa: F401  (sets up the runtime like a notebook does)
from conftest import REPO
from course.checks import core
from course.checks import speculative_decoding as check
from course.grading import exercises
from course.models import GPTConfig, KVCache, TinyGPT, load_pretrained

SOLUTION = REPO / "solutions" / "05_speculative_decoding.ipynb"
HEADER = "import math\nimport torch\nfrom course.models import KVCache\n"


@pytest.fixture(scope="module")
def cells():
    """The notebook's `sample` helper (the exercises call it), then every exercise cell."""
    nb = exercises.read(SOLUTION)
    manifest = exercises.parse_exercises(nb, SOLUTION.stem)
    helper = next(exercises.source(c) for c in nb.cells if "def sample(" in exercises.source(c))
    sample = re.search(r"^def sample\(.*?(?=^\S)", helper, re.S | re.M).group(0)
    return [sample] + [exercises.source(nb.cells[i]) for e in manifest.exercises for i in e.solution_cells]


def load(cells, replace: dict[str, str] | None = None, stub: str | None = None) -> dict:
    """Execute the exercise cells; ``replace`` edits the source (each old text must occur once or
    more), ``stub`` turns the function of that name into the student stub."""
    text = HEADER
    for cell in cells:
        if stub and f"def {stub}(" in cell:
            cell = exercises.stub_source(cell, f"Exercise for {stub}")
        text += "\n\n" + cell
    for old, new in (replace or {}).items():
        assert old in text, f"mutation target not found: {old!r}"
        text = text.replace(old, new)
    namespace: dict = {}
    exec(compile(text, "<solution cells>", "exec"), namespace)
    return namespace


def verdict(check_fn, fn) -> core.Result:
    check_fn(fn)
    return core.RESULTS[-1]


NAMES = ["sampling_probs", "speculative_accept", "speculative_step", "chi_square_test", "speedup_model",
         "estimate_alpha", "batched_accept"]

# (function name, wrong variant as {old source: new source}, what is wrong)
WRONG = [
    ("sampling_probs", {"logits = logits.float() if temperature == 1 else logits.float() / temperature":
                        "logits = logits.float()"}, "temperature ignored"),
    ("sampling_probs", {"mass_before = sorted_probs.cumsum(-1) - sorted_probs": "mass_before = sorted_probs.cumsum(-1)"},
     "top-p drops the token that crosses the threshold"),
    ("sampling_probs", {"        probs = probs / probs.sum(-1, keepdim=True)\n    return probs": "    return probs"},
     "top-p not renormalised"),
    ("sampling_probs", {"drop = drop_sorted.scatter(-1, order, drop_sorted)": "drop = drop_sorted"},
     "nucleus mask left in sorted order"),
    ("speculative_accept", {"while n < gamma and r[n] < ratio[n]:": "while n < gamma:"}, "always accept"),
    ("speculative_accept", {"residual = (p[n] - q[n]).clamp(min=0)": "residual = p[n]"}, "repair sampled from p"),
    ("speculative_accept", {"if n < gamma else p[gamma]": "if n < gamma else p[gamma - 1]"},
     "bonus from the wrong position"),
    ("speculative_accept", {"while n < gamma and r[n] < ratio[n]:": "while n < gamma and ratio[n] >= 1:"},
     "deterministic accept if p >= q"),
    ("speculative_accept", {"while n < gamma and r[n] < ratio[n]:": "while n < gamma and r[n] < min(1.0, ratio[n]) ** 2:"},
     "acceptance probability too low"),
    ("speculative_step", {"    target_cache.truncate(min(target_cache.length, settled))\n": ""}, "target not rolled back"),
    ("speculative_step", {"    draft_cache.truncate(min(draft_cache.length, settled))\n": ""}, "draft not rolled back"),
    ("speculative_step", {"pending = tokens[draft_cache.length:]": "pending = tokens[-1:]"},
     "draft fed only the last token"),
    ("speculative_step", {"p = to_probs(logits[-(gamma + 1):])": "p = to_probs(torch.cat([logits[-gamma:], logits[-1:]]))"},
     "target outputs off by one"),
    ("speculative_step", {"n, emitted = speculative_accept(p, torch.stack(qs), drafted, generator)":
                          "n, emitted = gamma, torch.cat([drafted, torch.multinomial(p[-1], 1, generator=generator)])"},
     "always accept inside the step"),
    ("chi_square_test", {"dof = int(support.sum()) - 1": "dof = int(support.sum())"}, "k degrees of freedom"),
    ("chi_square_test", {"expected = counts.sum() * probs[support]": "expected = probs[support]"},
     "expected counts not scaled by n"),
    ("chi_square_test", {"support = probs > 0": "support = probs >= 0"}, "zero-probability cells kept"),
    ("speedup_model", {"alpha ** (gamma + 1)": "alpha ** gamma"}, "one term short"),
    ("speedup_model", {"return expected, expected / (gamma * c + 1)": "return expected, expected"}, "draft cost ignored"),
    ("estimate_alpha", {"return successes / (successes + failures)": "return successes / (gamma * len(accepted))"},
     "mean(n) / gamma"),
    ("estimate_alpha", {"failures = sum(1 for n in accepted if n < gamma)": "failures = len(accepted)"},
     "a failure counted for fully accepted steps"),
    ("batched_accept", {"n = (r * q_x < p_x).long().cumprod(-1).sum(-1)": "n = (r * q_x < p_x).long().sum(-1)"},
     "total instead of leading acceptances"),
    ("batched_accept", {"n = (r * q_x < p_x).long().cumprod(-1).sum(-1)": "n = torch.full((batch,), gamma)"},
     "always accept"),
    ("batched_accept", {"q_padded = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)":
                        "q_padded = torch.cat([q, q[:, -1:]], dim=1)"}, "bonus drawn from p - q"),
]


@pytest.mark.parametrize("name", NAMES)
def test_check_passes_on_the_solution(cells, name):
    namespace = load(cells)
    result = verdict(getattr(check, name), namespace[name])
    assert result.passed, result.message


@pytest.mark.parametrize("name", NAMES)
def test_check_fails_on_the_student_stub(cells, name):
    namespace = load(cells, stub=name)
    result = verdict(getattr(check, name), namespace[name])
    assert not result.passed
    assert "not implemented yet" in result.message


@pytest.mark.parametrize("name, mutation, why", WRONG, ids=[f"{n}: {w}" for n, _, w in WRONG])
def test_check_rejects_a_wrong_implementation(cells, name, mutation, why):
    namespace = load(cells, replace=mutation)
    result = verdict(getattr(check, name), namespace[name])
    assert not result.passed, f"the {name} check accepted a wrong implementation ({why})"


def _first_tokens(accept, p, q, n_samples, seed):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(p.shape[-1])
    for _ in range(n_samples):
        drafted = torch.multinomial(q, 1, generator=gen)[:, 0]
        _, tokens = accept(p, q, drafted, gen)
        counts[tokens[0]] += 1
    return counts


def test_always_accepting_fails_the_chi_square_test_that_the_correct_rule_passes(cells):
    # The statistical test at the checks' false-alarm rate (1e-3), with a fixed seed: the correct
    # rule's first emitted token is consistent with p, always accepting gives q and is rejected.
    namespace = load(cells)
    p = torch.tensor([[0.40, 0.25, 0.20, 0.10, 0.05, 0.00], [0.2] * 5 + [0.0]])
    q = torch.tensor([[0.10, 0.10, 0.30, 0.20, 0.20, 0.10]])

    def always_accept(p, q, drafted, generator):
        return len(drafted), torch.cat([drafted, torch.multinomial(p[-1], 1, generator=generator)])

    _, good = check.chi_square_pvalue(_first_tokens(namespace["speculative_accept"], p, q, 3000, 0), p[0])
    _, bad = check.chi_square_pvalue(_first_tokens(always_accept, p, q, 3000, 0), p[0])
    assert good >= check.FALSE_ALARM
    assert bad < check.FALSE_ALARM
    # and the same holds without the impossible token 5, where only the frequencies give it away
    p2, q2 = p[:, :5] / p[:, :5].sum(-1, keepdim=True), q[:, :5] / q[:, :5].sum(-1, keepdim=True)
    _, bad2 = check.chi_square_pvalue(_first_tokens(always_accept, p2, q2, 3000, 1), p2[0])
    assert bad2 < 1e-30
    result = verdict(check.speculative_accept, always_accept)
    assert not result.passed


# --- bad input -----------------------------------------------------------------------------------


def _pair(vocab_draft=8):
    target = TinyGPT(GPTConfig(vocab_size=8, block_size=32, n_layer=1, n_head=2, d_model=16)).eval()
    draft = TinyGPT(GPTConfig(vocab_size=vocab_draft, block_size=32, n_layer=1, n_head=2, d_model=16)).eval()
    return target, draft


@pytest.mark.parametrize("gamma", [0, -1, 2.0, True])
def test_speculative_step_refuses_gamma_below_one_or_not_an_int(cells, gamma):
    step = load(cells)["speculative_step"]
    target, draft = _pair()
    with pytest.raises(ValueError, match="gamma must be an int >= 1"):
        step(target, draft, torch.tensor([1, 2]), KVCache.for_model(target, 1), KVCache.for_model(draft, 1), gamma,
             check.greedy_probs)


def test_speculative_step_refuses_a_draft_with_another_vocabulary(cells):
    step = load(cells)["speculative_step"]
    target, draft = _pair(vocab_draft=9)
    with pytest.raises(ValueError, match="share one vocabulary.*8 tokens.*9"):
        step(target, draft, torch.tensor([1, 2]), KVCache.for_model(target, 1), KVCache.for_model(draft, 1), 2,
             check.greedy_probs)


@pytest.mark.parametrize("temperature", [0, 0.0, -0.5])
def test_sampling_refuses_a_temperature_that_is_not_positive(cells, temperature):
    sampling_probs = load(cells)["sampling_probs"]
    with pytest.raises(ValueError, match="temperature must be > 0 when sampling"):
        sampling_probs(torch.zeros(4), temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        check.reference_sampling_probs(torch.zeros(4), temperature=temperature)


@pytest.mark.parametrize("kwargs, message", [({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"),
                                             ({"top_p": 1.01}, "top_p")])
def test_sampling_refuses_bad_top_k_and_top_p(cells, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load(cells)["sampling_probs"](torch.zeros(4), **kwargs)


def test_accept_refuses_mismatched_shapes(cells):
    accept = load(cells)["speculative_accept"]
    with pytest.raises(ValueError, match="gamma"):
        accept(torch.full((3, 4), 0.25), torch.full((1, 4), 0.25), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same vocabulary"):
        accept(torch.full((3, 4), 0.25), torch.full((2, 5), 0.2), torch.tensor([0, 1]))


# --- the check module's reference helpers --------------------------------------------------------


def test_chi_square_pvalue_matches_known_values():
    # chi2 survival function: P(chi2_1 >= 10) = 0.0015654..., P(chi2_2 >= 4.0833) = exp(-4.0833 / 2)
    stat, p = check.chi_square_pvalue(torch.tensor([30, 10]), torch.tensor([0.5, 0.5]))
    assert stat == pytest.approx(10.0) and p == pytest.approx(0.0015654022, rel=1e-6)
    stat, p = check.chi_square_pvalue(torch.tensor([40, 35, 25]), torch.tensor([0.5, 0.3, 0.2]))
    assert p == pytest.approx(math.exp(-stat / 2), rel=1e-9)
    assert check.chi_square_pvalue(torch.tensor([1, 1]), torch.tensor([1.0, 0.0])) == (math.inf, 0.0)


def test_greedy_probs_is_one_hot_on_the_first_argmax():
    probs = check.greedy_probs(torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 0.0, 0.0, 0.0]]))
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]


def test_reference_greedy_matches_tinygpt_generate():
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=8, block_size=32, n_layer=2, n_head=2, d_model=16)).eval()
    prompt = torch.tensor([3, 1, 4])
    want = model.generate(prompt[None], 12, temperature=0)[0]
    assert torch.equal(check.reference_greedy(model, prompt, 12), want)


def test_reference_speedup_formula_and_its_limit():
    assert check.reference_speedup(0.5, 2, 0.0) == (1.75, 1.75)
    assert check.reference_speedup(1.0, 3, 0.1) == pytest.approx((4.0, 4.0 / 1.3))
    assert check.reference_speedup(0.999999, 3, 0.1)[0] == pytest.approx(4.0, rel=1e-5)


# --- committed weights ---------------------------------------------------------------------------


def test_committed_pair_loads_with_one_vocabulary_and_the_documented_sizes():
    target, draft = load_pretrained("spec-target-char"), load_pretrained("spec-draft-char")
    # notebook 05 and scripts/train_spec_models.py explain these sizes: deep and narrow target,
    # shallow and wider draft; the cost ratio c comes from the 12x fewer layers
    assert (target.config.n_layer, target.config.d_model) == (24, 48)
    assert (draft.config.n_layer, draft.config.d_model) == (2, 64)
    assert target.config.vocab_size == draft.config.vocab_size == 96
    assert target.num_parameters() > 6 * draft.num_parameters()
    prompt = torch.tensor([[40, 41, 42]])
    for model in (target, draft):
        assert torch.isfinite(model(prompt)).all()
