"""Plausible wrong solutions that each exercise's check must fail: the meta-test's mutants.

``MUTANTS`` maps an exercise id to its mutants. Each is a small edit of the solution cell(s) in
``solutions/NN_*.ipynb`` (``edits``: text found exactly once, its wrong replacement) or, for a
rewrite, the wrong cell's whole source (``cells``). tests/test_meta.py runs them inside the one
execution of each solution notebook (course.grading.grader.verify_solution): after the check passes
on the solution and fails on the stub, each mutant replaces the solution cells, the check runs once
more and must fail, and the solution is put back. A mutant that no longer applies (the solution
changed under it) is reported, not skipped.

Add a mutant when a unit test in tests/test_*.py proves a check rejects a wrong variant: here the
same mistake is made inside the notebook, through the check cell the learner runs.
"""

from __future__ import annotations

from test_dist_device import TAGGED_PIPELINE

from course.grading.grader import Mutant

MUTANTS: dict[str, list[Mutant]] = {
    # --- 02 FlashAttention: gradients that are all zero or twice too large -----------------------
    "2.7": [
        Mutant("zero-gradients", "returns zeros of the right shapes and dtypes: a backward that never ran",
               edits=(("return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)",
                       "return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)"),)),
        Mutant("doubled-gradients", "every gradient twice the true one (a factor counted twice)",
               edits=(("return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)",
                       "return (2 * dq).to(q.dtype), (2 * dk).to(k.dtype), (2 * dv).to(v.dtype)"),)),
    ],
    "2.8": [
        Mutant("zero-gradients", "the kernel stores zeros for dK, dV and adds nothing to dQ",
               edits=(("tl.atomic_add(DQ + q_ptrs, tl.dot(ds.to(k.dtype), k), mask=row_ok[:, None])",
                       "tl.atomic_add(DQ + q_ptrs, 0.0 * tl.dot(ds.to(k.dtype), k), mask=row_ok[:, None])"),
                      ("tl.store(DK + kv_ptrs, dk.to(", "tl.store(DK + kv_ptrs, (0.0 * dk).to("),
                      ("tl.store(DV + kv_ptrs, dv.to(", "tl.store(DV + kv_ptrs, (0.0 * dv).to("))),
        Mutant("doubled-gradients", "dQ, dK and dV each twice the true gradient",
               edits=(("tl.atomic_add(DQ + q_ptrs, tl.dot(ds.to(k.dtype), k), mask=row_ok[:, None])",
                       "tl.atomic_add(DQ + q_ptrs, 2.0 * tl.dot(ds.to(k.dtype), k), mask=row_ok[:, None])"),
                      ("tl.store(DK + kv_ptrs, dk.to(", "tl.store(DK + kv_ptrs, (2.0 * dk).to("),
                      ("tl.store(DV + kv_ptrs, dv.to(", "tl.store(DV + kv_ptrs, (2.0 * dv).to("))),
    ],
    "2.9": [
        Mutant("zero-gradients", "backward returns zeros: autograd runs, the model never learns",
               edits=(("return dq, dk, dv, None",
                       "return torch.zeros_like(dq), torch.zeros_like(dk), torch.zeros_like(dv), None"),)),
        Mutant("doubled-gradients", "backward returns twice the gradients",
               edits=(("return dq, dk, dv, None", "return 2 * dq, 2 * dk, 2 * dv, None"),)),
    ],
    # --- 06 ZeRO -------------------------------------------------------------------------------
    "6.3": [
        Mutant("all-reduce-full-gradient",
               "all-reduces the whole gradient and keeps its slice: the same numbers, twice the traffic of "
               "a reduce-scatter, and every rank holds the full gradient (ZeRO-1 saves no gradient memory)",
               edits=(("tdist.reduce_scatter_tensor(grad_slice, grad)  # the sum over ranks of my slice",
                       "tdist.all_reduce(grad)\n"
                       "    grad_slice.copy_(grad.chunk(world)[tdist.get_rank()])"),)),
    ],
    "6.5": [
        Mutant("keeps-full-weights-on-ctx",
               "saves a full copy of W and b for backward: right gradients, but the gathered parameters "
               "stay alive between forward and backward, which is what sharding them was for",
               edits=(("ctx.save_for_backward(x, shard)  # not the gathered flat: it is freed when forward returns",
                       "ctx.save_for_backward(x, shard)\n        ctx.full = (weight.clone(), bias.clone())"),)),
    ],
    # --- 07 Megatron ---------------------------------------------------------------------------
    "7.5": [
        Mutant("gpipe-order", "all forwards, then all backwards: GPipe keeps m activations alive, 1F1B at most p",
               edits=(("""    warmup = min(p - stage - 1, m)
    order = [("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(m - warmup, m)]""",
                       """    return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]"""),)),
    ],
    "7.6": [
        Mutant("gpipe-order", "runs the pipeline in GPipe order (all forwards, then all backwards)",
               edits=(("order = one_f_one_b(world, m, rank)",
                       'order = [("F", i) for i in range(m)] + [("B", i) for i in range(m)]'),)),
        Mutant("tagged-isend-blocking-recv",
               "the earlier solution: isend per message and a blocking recv; runs on gloo, can hang on NCCL "
               "(tests/test_dist_device.py TAGGED_PIPELINE)", cells=(TAGGED_PIPELINE,)),
    ],
    # --- 09 InstructGPT (lifted from tests/test_instructgpt.py) ----------------------------------
    "9.4": [
        Mutant("bootstraps-past-the-end", "values after the last response token are not masked out",
               edits=(("r, v = rewards * mask, values * mask", "r, v = rewards, values"),)),
    ],
    "9.5": [
        Mutant("clip-without-minimum", "the clipped term alone: no pessimistic bound when the ratio helps",
               edits=(("surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)"
                       " * advantages)",
                       "surrogate = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages"),)),
    ],
    "9.8": [
        Mutant("no-reference-model", "drops the reference log-probs: the margin of the policy alone",
               edits=(("margin = (logp_w - ref_logp_w) - (logp_l - ref_logp_l)", "margin = logp_w - logp_l"),)),
    ],
    # --- 10 GRPO -------------------------------------------------------------------------------
    "10.1": [
        Mutant("whole-batch-normalisation", "normalises over all prompts, not within each group "
               "(tests/test_grpo.py batch-norm)",
               edits=(("mean = rewards.mean(dim=1, keepdim=True)", "mean = rewards.mean()"),
                      ("std = rewards.std(dim=1, keepdim=True, unbiased=False)", "std = rewards.std(unbiased=False)"))),
    ],
    "10.4": [
        Mutant("token-mean-for-sequence-mean", "averages over all tokens where the mean per sequence is asked",
               edits=(("return (kept.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).mean()",
                       "return kept.sum() / mask.sum().clamp_min(1.0)"),)),
    ],
    "10.6": [
        Mutant("off-by-one", "logits at t scored against token t instead of token t + 1",
               edits=(("gather(2, seq[:, 1:].unsqueeze(-1))", "gather(2, seq[:, :-1].unsqueeze(-1))"),)),
    ],
    # --- 11 AutoGen (tests/test_autogen.py) ------------------------------------------------------
    "11.1": [
        Mutant("greedy-pattern", "one greedy regular expression: two blocks come back as one, with the "
               "prose between them",
               edits=(("""    blocks = []
    for language, code in llm.code_blocks(text):
        if language in ("python", "py", ""):
            blocks.append(code)
    return blocks""", """    import re
    return re.findall(r"```(?:python|py)?\\n(.*)```", text, re.S)"""),)),
    ],
    # --- 13 Generative agents (tests/test_generative_agents.py) ----------------------------------
    "13.2": [
        Mutant("no-refresh", "returns the right memories but never sets last_accessed",
               edits=(("    for i in order:\n        stream[i].last_accessed = now\n", ""),)),
    ],
    # --- 16 Reflexion --------------------------------------------------------------------------
    "16.1": [
        Mutant("first-failure-fails-the-rest", "after the first failing test every later test reports its error "
               "(tests/test_reflexion.py, stopping at the first failure)",
               edits=(("error = f'{type(e).__name__}: {e}' if str(e) else type(e).__name__",
                       "error = setup = f'{type(e).__name__}: {e}' if str(e) else type(e).__name__"),)),
    ],
    "16.6": [
        Mutant("reads-hidden-ok", "retries on the hidden tests' verdict, which an executor cannot see",
               edits=(("while not program.examples_ok and", "while not program.hidden_ok and"),)),
    ],
    # --- 17 MIRA (tests/test_mira.py) ----------------------------------------------------------
    "17.4": [
        Mutant("bootstraps-terminal", "adds gamma * max Q(s') even when s' is terminal",
               edits=(("target = r + (0.0 if terminal else gamma * Q[s_next].max())",
                       "target = r + gamma * Q[s_next].max()"),)),
    ],
}


def for_notebook(stem: str) -> dict[str, list[Mutant]]:
    """The mutants of the exercises of notebook ``stem`` ('07_megatron' -> ids '7.*')."""
    number = str(int(stem.split("_", 1)[0]))
    return {exercise: found for exercise, found in MUTANTS.items() if exercise.split(".")[0] == number}
