"""The simulated episodic-memory task of notebook 13: days are reproducible from (task id, seed), the
simulated models err at exactly their stated rates' extremes, and the agents' scoring is the paper's."""

from __future__ import annotations

import random

import pytest
import torch

from course.checks.generative_agents import _reference_scores
from course.llm import simulated_memory as sm


def test_a_day_is_the_same_for_the_same_task_id_and_seed_and_differs_across_seeds():
    a, b = sm.make_day("day-004", 3, 0.2), sm.make_day("day-004", 3, 0.2)
    assert a == b
    assert sm.make_day("day-004", 4, 0.2) != a


def test_a_day_has_84_observations_four_facts_and_a_question_one_of_them_answers():
    day = sm.make_day("day-000", 0, 0.3)
    assert len(day.observations) == (sm.END - sm.START) // sm.STEP == 84
    facts = [o for o in day.observations if o.kind == "fact"]
    assert len(facts) == sm.EVENTS_PER_DAY
    assert [(o.subject, o.place) for o in facts if o.subject == day.subject] == [(day.subject, day.answer)]


def test_distractors_never_state_the_true_place_and_density_zero_has_none():
    day = sm.make_day("day-001", 2, 1.0)
    truth = {o.subject: o.place for o in day.observations if o.kind == "fact"}
    distractors = [o for o in day.observations if o.kind == "distractor"]
    assert len(distractors) == 84 - 4          # density 1: every non-fact slot
    assert all(o.place != truth[o.subject] for o in distractors)
    assert not any(o.kind == "distractor" for o in sm.make_day("day-001", 2, 0.0).observations)


def test_a_rater_with_no_noise_gives_the_careful_rating_and_full_noise_covers_1_to_10():
    careful = sm.SimulatedRater(0.0, random.Random(0))
    assert [careful.rate(k) for k in ("fact", "distractor", "routine", "reflection")] == [8, 3, 2, 8]
    noisy = sm.SimulatedRater(1.0, random.Random(0))
    assert {noisy.rate("routine") for _ in range(500)} == set(range(1, 11))


def test_the_reader_answers_from_the_best_ranked_fact_unless_it_misreads():
    fact = sm.Memory(0, "t", "fact", 8.0, 8.0, 8, "book club", "library")
    rumour = sm.Memory(1, "t", "distractor", 9.0, 9.0, 3, "book club", "park")
    assert sm.SimulatedReader(0.0, random.Random(0)).read([rumour, fact], "book club") == "library"
    always_wrong = sm.SimulatedReader(1.0, random.Random(0))
    assert all(always_wrong.read([fact], "book club") != "library" for _ in range(50))
    # no fact retrieved: a distractor misleads; nothing about the subject: a guess, or None when asked not to
    assert sm.SimulatedReader(0.0, random.Random(0)).read([rumour], "book club") == "park"
    assert sm.SimulatedReader(0.0, random.Random(0)).read([], "book club", guess=False) is None


def test_stream_scores_match_the_notebooks_reference_scoring():
    day = sm.make_day("day-002", 1, 0.4)
    rater = sm.SimulatedRater(0.3, random.Random(1))
    memories = [sm.Memory(o.id, o.text, o.kind, o.minute / 60, o.minute / 60, rater.rate(o.kind)) for o in day.observations]
    got = sm.stream_scores(memories, day.question, 21.0)
    emb = torch.stack([torch.from_numpy(sm._embedding(m.text)) for m in memories])
    want = _reference_scores(torch.tensor([m.last_accessed for m in memories], dtype=torch.float64),
                             torch.tensor([float(m.importance) for m in memories], dtype=torch.float64),
                             emb, torch.from_numpy(sm._embedding(day.question)), 21.0)
    # both float64 from the same unit vectors: agreement to 1e-9 is ~1e6 float64 roundings
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-9, rtol=0)


def test_with_a_careful_rater_and_reader_the_memory_stream_always_retrieves_and_answers_right():
    rates = sm.Rates(k=3, distractors=0.2, importance_noise=0.0, misread=0.0)
    result = sm.accuracy(rates, seed=0, days=20)
    assert result["memory stream"] == {"accuracy": 1.0, "retrieved": 1.0, "reflections": 0.0}


def test_a_reader_that_always_misreads_answers_nothing_right_whatever_it_retrieves():
    result = sm.accuracy(sm.Rates(misread=1.0, distractors=0.0), seed=0, days=10)
    for agent in ("relevance only", "memory stream", "memory stream + reflection"):
        assert result[agent]["accuracy"] == 0.0


def test_only_the_reflection_agent_reflects_and_about_two_to_five_times_a_day_at_the_defaults():
    result = sm.accuracy(sm.Rates(), seed=0, days=20)
    assert all(result[a]["reflections"] == 0 for a in sm.AGENTS[:3])
    assert 2 <= result["memory stream + reflection"]["reflections"] <= 5


def test_results_are_exact_for_a_seed():
    assert sm.accuracy(sm.Rates(), seed=1, days=15) == sm.accuracy(sm.Rates(), seed=1, days=15)


@pytest.mark.parametrize("bad", [dict(k=0), dict(k=1.5), dict(distractors=1.2), dict(importance_noise=-0.1),
                                 dict(misread=True), dict(threshold=0)])
def test_rates_refuse_values_outside_their_range(bad):
    with pytest.raises(ValueError):
        sm.Rates(**bad)


def test_unknown_agents_kinds_and_rate_names_are_refused_with_the_expected_values():
    with pytest.raises(ValueError, match="agent must be one of"):
        sm.answer(sm.make_day("day-000", 0, 0.2), "oracle", sm.Rates(), 0)
    with pytest.raises(ValueError, match="kind must be one of"):
        sm.SimulatedRater(0.0, random.Random(0)).rate("rumour")
    with pytest.raises(ValueError, match="no rate named"):
        sm.with_rate(sm.Rates(), "temperature", 0.5)


def test_every_text_of_a_day_its_question_and_reflections_is_in_the_embedded_table():
    texts = set(sm.all_texts())
    for index in range(20):
        day = sm.make_day(f"day-{index:03d}", 7, 0.5)
        assert {o.text for o in day.observations} <= texts
        assert day.question in texts
    assert all(sm.REFLECTION.format(subject=s, place=p) in texts for s in sm.SUBJECTS for p in sm.PLACES)


def test_an_unknown_embedder_or_text_is_refused():
    with pytest.raises(ValueError, match="embedder must be one of"):
        sm.Rates(embedder="word2vec")
    with pytest.raises(ValueError, match="not a text of this task"):
        sm.stream_scores([sm.Memory(0, "a text no day holds", "routine", 8.0, 8.0, 2)], "Where is the pub tonight?", 9.0)


def test_the_committed_table_has_five_seeds_of_200_days_for_every_point_and_agent():
    from collections import Counter

    from course import bench
    from course.checks.generative_agents import MEMORY_CSV

    rows, tags = bench.load_csv(MEMORY_CSV)
    assert tags["seeds"] == "0 1 2 3 4" and tags["days_per_seed"] == "200"
    counts = Counter((r["sweep"], r["value"], r["agent"]) for r in rows)
    assert set(counts.values()) == {5}
    assert {agent for _, _, agent in counts} == set(sm.AGENTS)
    assert {r["embedder"] for r in rows} == set(sm.EMBEDDERS)
    assert all(r["days"] == 200 and 0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_the_script_runs_quickly_and_writes_nothing_with_quick(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from course.checks.generative_agents import MEMORY_CSV

    before = MEMORY_CSV.read_bytes()
    script = Path(__file__).resolve().parents[1] / "scripts" / "generative_agents_memory.py"
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "COURSE_HEADLESS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "k 1:" in done.stdout and "k 3:" in done.stdout
    assert MEMORY_CSV.read_bytes() == before
