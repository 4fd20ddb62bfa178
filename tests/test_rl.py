"""course.rl: the RL pieces notebooks 09 (InstructGPT) and 10 (GRPO) share."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import course  # noqa: F401
from course import rl
from course.data import CharTokenizer, Example
from course.models.tinygpt import GPTConfig, TinyGPT

TOK = CharTokenizer()
STOP_ID = TOK.stoi[rl.STOP]


@pytest.fixture(scope="module")
def task():
    return rl.addition_task(max_operand=9, n_heldout=20)


@pytest.fixture(scope="module")
def model(task):
    m = rl.tiny_policy(task, seed=0, n_layer=1, d_model=32)
    rl.train_sft(m, TOK, task.train, width=task.width, steps=40, batch_size=32, seed=0)  # emits digits, often wrong
    return m


# --- task and policy -------------------------------------------------------------------------------


def test_addition_task_splits_distinct_problems_and_sizes_the_widths(task):
    assert len(task.heldout) == 20
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.heldout}
    assert len({e.prompt for e in task.train + task.heldout}) == len(task.train) + len(task.heldout)
    assert task.width == len("9+9=") and task.max_new_tokens == len("18") + 1
    assert all(int(e.answer) == sum(int(x) for x in e.prompt[:-1].split("+")) for e in task.train)


@pytest.mark.parametrize("kwargs", [{"max_operand": 0}, {"max_operand": 3, "n_heldout": 16}, {"n_heldout": 0}])
def test_addition_task_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        rl.addition_task(**kwargs)


def test_tiny_policy_fits_prompt_and_answer(task, model):
    assert model.config.block_size == task.width + task.max_new_tokens


# --- prompts, sampling, log-probs -----------------------------------------------------------------


def test_encode_prompts_left_pads_with_spaces():
    ids = rl.encode_prompts(TOK, ["1+2=", "10+2="], 6)
    assert [TOK.decode(r) for r in ids] == ["  1+2=", " 10+2="]


@pytest.mark.parametrize("prompts,width", [([], 4), (["12345"], 4), (["1"], 0), (["1"], True)])
def test_encode_prompts_rejects_bad_arguments(prompts, width):
    with pytest.raises(ValueError):
        rl.encode_prompts(TOK, prompts, width)


def test_completion_mask_keeps_tokens_through_the_first_stop():
    comps = torch.tensor([[5, STOP_ID, 7, STOP_ID], [5, 6, 7, 8], [STOP_ID, 1, 1, 1]])
    assert rl.completion_mask(comps, STOP_ID).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    with pytest.raises(ValueError):
        rl.completion_mask(comps[0], STOP_ID)


def test_sampled_logprobs_match_a_recomputation_with_gradients(task, model):
    ids = rl.encode_prompts(TOK, [e.prompt for e in task.train[:6]], task.width)
    comps, logp = rl.sample_completions(model, ids, task.max_new_tokens, generator=torch.Generator().manual_seed(0))
    assert comps.shape == logp.shape == (6, task.max_new_tokens) and comps.dtype == torch.long
    again = rl.token_logprobs(model, ids, comps)
    assert again.requires_grad
    # the KV-cached sampler and the full forward sum in different orders: float32 rounding only
    assert torch.allclose(again.detach(), logp, atol=1e-5)
    assert (logp <= 0).all()


def test_sampling_is_seeded(task, model):
    ids = rl.encode_prompts(TOK, [task.train[0].prompt] * 4, task.width)
    a = rl.sample_completions(model, ids, 3, generator=torch.Generator().manual_seed(1))[0]
    b = rl.sample_completions(model, ids, 3, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b)


def test_sample_completions_validates(task, model):
    ids = rl.encode_prompts(TOK, ["1+1="], task.width)
    with pytest.raises(ValueError, match="block_size"):
        rl.sample_completions(model, ids, 10)
    with pytest.raises(ValueError, match="temperature"):
        rl.sample_completions(model, ids, 2, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        rl.sample_completions(model, ids, 0)
    with pytest.raises(TypeError):
        rl.sample_completions(torch.nn.Linear(2, 2), ids, 2)


def test_token_logprobs_and_sample_texts_validate(task, model):
    ids = rl.encode_prompts(TOK, ["1+1="], task.width)
    with pytest.raises(ValueError):
        rl.token_logprobs(model, ids, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        rl.token_logprobs(model, ids[:, :0], torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        rl.sample_texts(model, TOK, task.heldout, 0, width=task.width, max_new_tokens=task.max_new_tokens)
    with pytest.raises(ValueError):
        rl.train_sft(model, TOK, [], width=task.width, steps=1)


def test_decode_completions_cuts_after_the_first_stop():
    comps = torch.stack([TOK.encode("12\n3"), TOK.encode("1234")])
    assert rl.decode_completions(TOK, comps) == ["12\n", "1234"]


# --- SFT -----------------------------------------------------------------------------------------


def test_sft_batch_masks_everything_but_the_response():
    ids, mask = rl.sft_batch(TOK, [Example("1+1=", "2"), Example("9+9=", "18")], 4)
    assert TOK.decode(ids[0]) == "1+1=2\n\n" and TOK.decode(ids[1]) == "9+9=18\n"
    # target ids[:, t + 1] is learned where mask[:, t] == 1: the answer and its stop token
    assert [TOK.decode(ids[i, 1:][mask[i].bool()]) for i in range(2)] == ["2\n", "18\n"]


def test_sft_loss_ignores_the_prompt_and_train_sft_lowers_it(task):
    m = rl.tiny_policy(task, seed=1, n_layer=1, d_model=32)
    ids, mask = rl.sft_batch(TOK, task.train[:32], task.width)
    before = rl.sft_loss(m, ids, mask).item()
    losses = rl.train_sft(m, TOK, task.train, width=task.width, steps=30, batch_size=32, seed=0)
    assert len(losses) == 30 and rl.sft_loss(m, ids, mask).item() < 0.7 * before
    with pytest.raises(ValueError, match="mask"):
        rl.sft_loss(m, ids, mask[:, :-1])


# --- evaluation -----------------------------------------------------------------------------------


def test_pass_at_k_matches_the_combinatorial_definition():
    assert rl.pass_at_k(10, 0, 3) == 0.0 and rl.pass_at_k(10, 8, 3) == 1.0
    assert math.isclose(rl.pass_at_k(5, 2, 2), 1 - math.comb(3, 2) / math.comb(5, 2))
    with pytest.raises(ValueError):
        rl.pass_at_k(3, 4, 1)


def test_majority_vote_breaks_ties_by_first_seen():
    e = Example("1+1=", "2")
    assert rl.majority_correct(e, ["2\n", "3\n", "3\n", "2\n"])  # 2 and 3 tie; 2 came first
    assert not rl.majority_correct(e, ["3\n", "2\n", "3\n"])
    with pytest.raises(ValueError):
        rl.majority_correct(e, [])


def test_pass_and_maj_on_hand_made_samples():
    exs = [Example("1+1=", "2"), Example("2+2=", "4")]
    samples = [["2\n", "5\n", "2\n", "7\n"], ["1\n", "1\n", "4\n", "3\n"]]
    p1, m1 = rl.pass_and_maj(samples, exs, 1)
    assert math.isclose(p1, (2 / 4 + 1 / 4) / 2) and m1 == 0.5
    p4, m4 = rl.pass_and_maj(samples, exs, 4)
    assert p4 == 1.0 and m4 == 0.5


def test_greedy_accuracy_is_a_fraction(task, model):
    acc = rl.greedy_accuracy(model, TOK, task.heldout, width=task.width, max_new_tokens=task.max_new_tokens)
    assert 0.0 <= acc <= 1.0 and (acc * len(task.heldout)).is_integer()


# --- GRPO pieces -----------------------------------------------------------------------------------


def test_group_advantages_validates_and_zeroes_constant_groups():
    assert torch.equal(rl.group_advantages(torch.ones(2, 4)), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        rl.group_advantages(torch.ones(4))
    with pytest.raises(ValueError):
        rl.group_advantages(torch.ones(2, 4, dtype=torch.long))


def test_kl_k3_is_zero_on_equal_inputs_and_rejects_mismatched_shapes():
    x = torch.log(torch.rand(3, 4))
    assert torch.equal(rl.kl_k3(x, x), torch.zeros(3, 4))
    with pytest.raises(ValueError):
        rl.kl_k3(x, x[:, :2])


def test_grpo_loss_rejects_mismatched_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask"):
        rl.grpo_loss(x, x, x, x, torch.ones(2, 2))


def test_process_advantages_validates():
    r = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError):
        rl.process_advantages(r, torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.bool), 3)
    with pytest.raises(ValueError):
        rl.process_advantages(r, torch.zeros(1, 2, 3, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.bool), 0)


def test_prefix_step_rewards_reward_steps_until_the_first_mistake():
    comps = torch.stack([TOK.encode("12\n"), TOK.encode("13\n"), TOK.encode("1\n\n"), TOK.encode("92\n")])
    exs = [Example("5+7=", "12")] * 4
    assert rl.prefix_step_rewards(TOK, exs, comps).tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]]
    short = torch.stack([TOK.encode("1"), TOK.encode("2")])
    assert rl.prefix_step_rewards(TOK, exs[:2], short).tolist() == [[1], [0]]
    with pytest.raises(ValueError):
        rl.prefix_step_rewards(TOK, exs[:1], comps)


def test_rft_examples_keep_one_example_per_correct_sample():
    exs = [Example("1+1=", "2"), Example("2+2=", "4")]
    got = rl.rft_examples(exs, [["2\n", "2\n", "3\n"], [" 4\n"]])
    assert got == [Example("1+1=", "2"), Example("1+1=", "2"), Example("2+2=", "4")]
    with pytest.raises(ValueError):
        rl.rft_examples(exs, [["2\n"]])


# --- the training loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("supervision", ["outcome", "process"])
def test_train_grpo_logs_and_moves_the_policy_but_not_the_reference(task, model, supervision):
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    logged = []
    hist = rl.train_grpo(policy, ref, TOK, task.train, task.heldout, width=task.width,
                         max_new_tokens=task.max_new_tokens, steps=4, prompts_per_step=4, group_size=4,
                         eval_every=2, supervision=supervision, on_log=lambda h: logged.append(h.step[-1]),
                         reward=lambda e, text: float(text[0] == e.answer[0]))  # varies within groups
    assert hist.step == [0, 2, 4] and logged == [0, 2, 4]
    assert len(hist.heldout_accuracy) == len(hist.kl) == len(hist.train_reward) == len(hist.seconds) == 3
    assert all(k >= 0 for k in hist.kl) and hist.seconds == sorted(hist.seconds)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_state.items())
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), model.parameters(), strict=True))


def test_train_grpo_stops_at_the_time_budget(task, model):
    hist = rl.train_grpo(copy.deepcopy(model), model, TOK, task.train, task.heldout, width=task.width,
                         max_new_tokens=task.max_new_tokens, steps=1000, prompts_per_step=2, group_size=2,
                         eval_every=1000, time_budget_s=0.0)
    assert hist.step == [0, 1]


@pytest.mark.parametrize("kwargs", [{"group_size": 1}, {"steps": -1}, {"supervision": "dense"}, {"eval_every": 0}])
def test_train_grpo_rejects_bad_arguments(task, model, kwargs):
    with pytest.raises(ValueError):
        rl.train_grpo(model, model, TOK, task.train, task.heldout, width=task.width,
                      max_new_tokens=task.max_new_tokens, **{"steps": 1, **kwargs})


def test_train_grpo_requires_tinygpt_models(task):
    other = TinyGPT(GPTConfig(vocab_size=96, block_size=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(TypeError):
        rl.train_grpo(torch.nn.Linear(2, 2), other, TOK, task.train, task.heldout, width=task.width,
                      max_new_tokens=task.max_new_tokens, steps=1)


# --- left padding with an attention mask ------------------------------------------------------------


def test_padding_mask_marks_the_left_padding_false():
    assert rl.padding_mask(["1+2=", "10+2="], 6).tolist() == [[False, False, True, True, True, True],
                                                              [False, True, True, True, True, True]]
    with pytest.raises(ValueError):
        rl.padding_mask(["12345"], 4)


# float32 logits of a 2-layer model: masked keys add exact zeros to each softmax, but the attention
# runs over a different number of keys, so the summation order differs: ~1e-7 on O(1) log-probs.
PAD_TOL = 1e-5


@pytest.mark.parametrize("prompt", ["1+2=", "12+13="])
def test_the_same_prompt_padded_to_two_lengths_gives_the_same_next_token_distribution(task, model, prompt):
    def next_token_logp(width, masked):
        ids = rl.encode_prompts(TOK, [prompt], width)
        mask = rl.padding_mask([prompt], width) if masked else None
        return model(ids, attention_mask=mask)[:, -1].float().log_softmax(-1)

    short, long = len(prompt), model.config.block_size
    assert (next_token_logp(short, True) - next_token_logp(long, True)).abs().max() <= PAD_TOL
    # without the mask the spaces change the output (this model was trained with 4-wide prompts):
    assert (next_token_logp(short, False) - next_token_logp(long, False)).abs().max() > 100 * PAD_TOL
    # a prompt without padding is the same with or without the mask: the mask is all True
    assert torch.equal(next_token_logp(short, True), next_token_logp(short, False))


def test_masked_sampling_logprobs_match_a_masked_recomputation_and_ignore_padding(task, model):
    prompts = ["1+2=", "9+9="]
    g = lambda: torch.Generator().manual_seed(0)
    narrow = rl.sample_completions(model, rl.encode_prompts(TOK, prompts, 4), 2, generator=g(),
                                   prompt_mask=rl.padding_mask(prompts, 4))
    ids = rl.encode_prompts(TOK, prompts, 5)  # block_size 7: 5 + 2 new tokens
    mask = rl.padding_mask(prompts, 5)
    wide = rl.sample_completions(model, ids, 2, generator=g(), prompt_mask=mask)
    assert torch.equal(narrow[0], wide[0])  # same draws: the distributions agree to ~1e-7
    assert torch.allclose(narrow[1], wide[1], atol=PAD_TOL)
    again = rl.token_logprobs(model, ids, wide[0], prompt_mask=mask)
    assert torch.allclose(again.detach(), wide[1], atol=PAD_TOL)
    with pytest.raises(ValueError, match="prompt_mask"):
        rl.token_logprobs(model, ids, wide[0], prompt_mask=mask.float())


def test_tinygpt_rejects_an_attention_mask_of_the_wrong_shape(model):
    ids = rl.encode_prompts(TOK, ["1+2="], 4)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(1, 3, dtype=torch.bool))


def test_an_all_true_attention_mask_changes_nothing(model):
    ids = torch.randint(0, 96, (3, model.config.block_size), generator=torch.Generator().manual_seed(0))
    plain = model(ids)
    masked = model(ids, attention_mask=torch.ones_like(ids, dtype=torch.bool))
    assert torch.allclose(plain, masked, atol=1e-6)  # an explicit bool mask vs is_causal: float32 rounding only


# --- the plumbing on whole sequences ---------------------------------------------------------------------


def test_response_mask_covers_the_completion_through_its_first_stop():
    seq = torch.stack([TOK.encode("  1+2=3\n\n"), TOK.encode(" 10+2=123")])
    assert rl.response_mask(seq, 6, STOP_ID).tolist() == [[0] * 6 + [1, 1, 0], [0] * 6 + [1, 1, 1]]
    with pytest.raises(ValueError):
        rl.response_mask(seq, 9, STOP_ID)


def test_response_logprobs_sum_to_the_log_probability_of_the_response(task, model):
    ids = rl.encode_prompts(TOK, [e.prompt for e in task.train[:5]], task.width)
    comps, logp = rl.sample_completions(model, ids, task.max_new_tokens, generator=torch.Generator().manual_seed(2))
    seq = torch.cat([ids, comps], 1)
    mask = rl.response_mask(seq, task.width, STOP_ID)
    per_token = rl.response_logprobs(model, seq, mask)
    assert per_token.requires_grad and torch.equal(per_token[mask == 0], torch.zeros(int((mask == 0).sum())))
    sampled = (logp * rl.completion_mask(comps, STOP_ID)).sum(1)
    assert torch.allclose(per_token.detach().sum(1), sampled, atol=1e-5)  # the KV-cached sampler: float32 order


@pytest.mark.parametrize("aggregation", rl.AGGREGATIONS)
def test_accumulated_gradients_equal_the_full_batch_gradient(task, model, aggregation):
    m = copy.deepcopy(model)
    ids = rl.encode_prompts(TOK, [e.prompt for e in task.train[:5]], task.width)
    comps, _ = rl.sample_completions(m, ids, task.max_new_tokens, generator=torch.Generator().manual_seed(3))
    seq = torch.cat([ids, comps], 1)
    mask = rl.response_mask(seq, task.width, STOP_ID)
    old = rl.response_logprobs(m, seq, mask).detach() + 0.05 * mask
    adv = torch.linspace(-1, 1, 5).unsqueeze(1) * mask
    full = rl.accumulate_gradients(m, seq, mask, old, adv, 5, aggregation=aggregation)
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    value = rl.accumulate_gradients(m, seq, mask, old, adv, 2, aggregation=aggregation)  # 2 + 2 + 1 rows
    assert math.isclose(value, full, rel_tol=1e-5, abs_tol=1e-7)
    for p, w in zip(m.parameters(), want, strict=True):
        assert torch.allclose(p.grad, w, atol=1e-6, rtol=1e-4)  # float32, sums of ~100 terms
    with pytest.raises(ValueError):
        rl.accumulate_gradients(m, seq, mask, old, adv, 0)


# --- the training and evaluation loops hide the padding (issue 19 item 4) -------------------------


def test_left_padding_mask_reads_the_padding_off_the_ids_like_padding_mask():
    prompts = ["1+2=", "10+2=", "9+9="]
    ids = rl.encode_prompts(TOK, prompts, 7)
    assert torch.equal(rl.left_padding_mask(ids, TOK.stoi[rl.PAD]), rl.padding_mask(prompts, 7))
    seq = torch.cat([ids, TOK.encode(" 3\n").expand(3, -1)], dim=1)  # a space inside the completion stays True
    assert rl.left_padding_mask(seq, TOK.stoi[rl.PAD])[:, 7:].all()
    with pytest.raises(ValueError, match="long"):
        rl.left_padding_mask(ids.float(), TOK.stoi[rl.PAD])


def test_greedy_completions_without_a_mask_are_generate_and_with_one_ignore_the_padding(task, model):
    prompts = [e.prompt for e in task.heldout]
    ids = rl.encode_prompts(TOK, prompts, task.width)
    plain = rl.greedy_completions(model, ids, task.max_new_tokens)
    assert torch.equal(plain, model.generate(ids, task.max_new_tokens, temperature=0.0)[:, task.width:])
    wide = rl.encode_prompts(TOK, prompts, task.width + 1)  # block_size leaves room for one more space
    assert torch.equal(rl.greedy_completions(model, ids, 2, prompt_mask=rl.padding_mask(prompts, task.width)),
                       rl.greedy_completions(model, wide, 2, prompt_mask=rl.padding_mask(prompts, task.width + 1)))


def wide_policy(task, extra=3, seed=0):
    """A policy whose block leaves room to pad ``task``'s prompts ``extra`` more characters, SFT-trained a little."""
    wide_task = rl.Task(task.train, task.heldout, task.width + extra, task.max_new_tokens)
    m = rl.tiny_policy(wide_task, seed=seed, n_layer=1, d_model=32)
    rl.train_sft(m, TOK, task.train, width=task.width, steps=30, batch_size=32, seed=seed)
    return m


def test_sft_loss_with_the_padding_mask_does_not_depend_on_the_padding_width(task):
    m = wide_policy(task)
    examples = task.train[:16]
    losses = []
    for width in (task.width, task.width + 3):
        ids, mask = rl.sft_batch(TOK, examples, width)
        losses.append(rl.sft_loss(m, ids, mask, attention_mask=rl.left_padding_mask(ids, TOK.stoi[rl.PAD])).item())
    assert abs(losses[0] - losses[1]) <= PAD_TOL
    ids, mask = rl.sft_batch(TOK, examples, task.width + 3)
    assert abs(rl.sft_loss(m, ids, mask).item() - losses[0]) > 100 * PAD_TOL  # unmasked: the spaces matter


def test_train_grpo_log_probs_and_rewards_do_not_depend_on_the_padding_width(task):
    """The default (masked) training loop sees the same rollouts, rewards, advantages and log-probs
    whether prompts are padded to the task's width or 3 characters more: <= PAD_TOL on the log-probs."""
    start = wide_policy(task)
    seen = {}

    def recording_loss(width):
        seen[width] = []

        def loss(logp, old_logp, ref_logp, adv, mask, **kwargs):
            seen[width].append([t.detach().clone() for t in (logp, old_logp, ref_logp, adv, mask)])
            return rl.grpo_loss(logp, old_logp, ref_logp, adv, mask, **kwargs)
        return loss

    accuracies = {}
    for width in (task.width, task.width + 3):
        policy = copy.deepcopy(start)
        hist = rl.train_grpo(policy, copy.deepcopy(start), TOK, task.train, task.heldout, width=width,
                             max_new_tokens=task.max_new_tokens, steps=3, prompts_per_step=4, group_size=4,
                             eval_every=3, seed=0, loss=recording_loss(width))
        accuracies[width] = hist.heldout_accuracy
    narrow, wide = seen[task.width], seen[task.width + 3]
    assert len(narrow) == len(wide) == 3
    for a, b in zip(narrow, wide):
        assert torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])  # advantages (from rewards) and masks: exact
        for x, y in zip(a[:3], b[:3]):  # logp, old_logp, ref_logp
            assert (x - y).abs().max().item() <= PAD_TOL
    assert accuracies[task.width] == accuracies[task.width + 3]


def test_without_the_mask_train_grpo_does_depend_on_the_padding_width(task):
    start = wide_policy(task)
    ref_logps = []

    def loss(logp, old_logp, ref_logp, adv, mask, **kwargs):
        ref_logps.append(ref_logp.detach().clone())
        return rl.grpo_loss(logp, old_logp, ref_logp, adv, mask, **kwargs)

    for width in (task.width, task.width + 3):
        rl.train_grpo(copy.deepcopy(start), copy.deepcopy(start), TOK, task.train, task.heldout, width=width,
                      max_new_tokens=task.max_new_tokens, steps=1, prompts_per_step=4, group_size=4, seed=0,
                      loss=loss, mask_padding=False)
    assert ref_logps[0].shape != ref_logps[1].shape or (ref_logps[0] - ref_logps[1]).abs().max() > 100 * PAD_TOL


def test_evaluation_does_not_depend_on_the_padding_width(task):
    m = wide_policy(task)
    kwargs = dict(max_new_tokens=task.max_new_tokens)
    assert rl.greedy_accuracy(m, TOK, task.heldout, width=task.width, **kwargs) == \
        rl.greedy_accuracy(m, TOK, task.heldout, width=task.width + 3, **kwargs)
    assert rl.sample_texts(m, TOK, task.heldout, 4, width=task.width, seed=1, **kwargs) == \
        rl.sample_texts(m, TOK, task.heldout, 4, width=task.width + 3, seed=1, **kwargs)


def test_train_sft_calls_on_eval_every_eval_every_steps_and_after_the_last(task):
    m = rl.tiny_policy(task, seed=0, n_layer=1, d_model=32)
    calls = []
    rl.train_sft(m, TOK, task.train, width=task.width, steps=5, batch_size=8, eval_every=2,
                 on_eval=lambda step, model, spent: calls.append((step, model.training, spent >= 0)))
    assert calls == [(2, False, True), (4, False, True), (5, False, True)]
    with pytest.raises(ValueError, match="eval_every"):
        rl.train_sft(m, TOK, task.train, width=task.width, steps=1, eval_every=2)
