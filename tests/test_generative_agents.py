"""The notebook-13 checks pass on correct code and fail on plausible wrong code; the town's rules
behave as the notebook describes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from course import llm
from course.checks import generative_agents as check
from course.checks.core import RESULTS
from course.llm.policies import town

embedder = llm.get_embedder("hashing")


def passed() -> bool:
    return RESULTS[-1].passed


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise 13.x")


@dataclass
class Memory:
    id: int
    description: str
    created: float
    last_accessed: float
    importance: int
    embedding: torch.Tensor
    kind: str = "observation"
    evidence: list = field(default_factory=list)


class MemoryStream(list):
    def add(self, description, now, kind="observation", importance=None, evidence=()):
        memory = Memory(len(self), description, now, now, town.importance(description) if importance is None
                        else importance, embedder.embed([description])[0], kind, list(evidence))
        self.append(memory)
        return memory


def retrieval_scores(last_accessed, importance, embeddings, query, now, *, weights=(1.0, 1.0, 1.0), decay=0.995,
                     normalise_terms=True):
    def normalise(x):
        if not normalise_terms:
            return x
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else torch.zeros_like(x)

    recency = decay ** (now - last_accessed)
    relevance = torch.nn.functional.cosine_similarity(embeddings, query[None, :], dim=1)
    return (weights[0] * normalise(recency) + weights[1] * normalise(importance.float())
            + weights[2] * normalise(relevance))


def retrieve(stream, query_text, now, *, k=3, weights=(1.0, 1.0, 1.0), refresh=True, ties_newest=True):
    if not stream:
        return []
    scores = retrieval_scores(torch.tensor([m.last_accessed for m in stream]),
                              torch.tensor([float(m.importance) for m in stream]),
                              torch.stack([m.embedding for m in stream]), embedder.embed([query_text])[0], now,
                              weights=weights)
    sign = -1 if ties_newest else 1
    order = sorted(range(len(stream)), key=lambda i: (-float(scores[i]), sign * stream[i].created))[:k]
    if refresh:
        for i in order:
            stream[i].last_accessed = now
    return [stream[i] for i in order]


def maybe_reflect(stream, now, *, threshold, k=3, weights=(1.0, 1.0, 1.0), count_all=False):
    last = max((m.created for m in stream if m.kind == "reflection"), default=-math.inf)
    recent = [m for m in stream if m.kind != "reflection" and (count_all or m.created > last)]
    if sum(m.importance for m in recent) <= threshold:
        return []
    new = []
    for question in town.reflection_questions(recent):
        evidence = retrieve(stream, question, now, k=k, weights=weights)
        text, importance = town.insight(question, evidence)
        new.append(stream.add(text, now, kind="reflection", importance=importance, evidence=[m.id for m in evidence]))
    return new


def decompose(day_plan, step, restart_hours=True):
    if step <= 0 or 60 % step:
        raise ValueError("step")
    blocks = []
    for i, (start, end, activity, place) in enumerate(day_plan):
        if i and start != day_plan[i - 1][1]:
            raise ValueError("gap")
        for h, hour in enumerate(range(start, end)):
            for j, minute in enumerate(range(0, 60, step)):
                begin = hour * 60 + minute
                label = h + 1 if restart_hours else hour + 1
                blocks.append((begin, begin + step, f"{activity} (hour {label}, part {j + 1})", place))
    return blocks


def test_retrieval_scores_passes_fails_on_stub_and_without_normalisation():
    check.retrieval_scores(retrieval_scores)
    assert passed()
    check.retrieval_scores(stub)
    assert not passed()
    check.retrieval_scores(lambda *a, **k: retrieval_scores(*a, **k, normalise_terms=False))
    assert not passed() and "min-max" in RESULTS[-1].message


def test_retrieval_scores_rejects_decay_in_the_wrong_direction():
    def inverted(last_accessed, importance, embeddings, query, now, **kwargs):
        # decay ** (last_accessed - now): older memories would score *higher*
        return retrieval_scores(2 * now - last_accessed, importance, embeddings, query, now, **kwargs)

    check.retrieval_scores(inverted)
    assert not passed()


def test_retrieve_passes_and_rejects_missing_refresh_and_wrong_ties():
    check.retrieve(retrieve, MemoryStream)
    assert passed()
    check.retrieve(stub, MemoryStream)
    assert not passed()
    check.retrieve(lambda *a, **k: retrieve(*a, **k, refresh=False), MemoryStream)
    assert not passed() and "last_accessed" in RESULTS[-1].message
    check.retrieve(lambda *a, **k: retrieve(*a, **k, ties_newest=False), MemoryStream)
    assert not passed()


def test_maybe_reflect_passes_and_rejects_counting_old_memories_again():
    check.maybe_reflect(maybe_reflect, MemoryStream)
    assert passed()
    check.maybe_reflect(stub, MemoryStream)
    assert not passed()
    check.maybe_reflect(lambda *a, **k: maybe_reflect(*a, **k, count_all=True), MemoryStream)
    assert not passed() and "newest reflection" in RESULTS[-1].message


def test_decompose_passes_and_rejects_hours_counted_from_midnight():
    check.decompose(decompose)
    assert passed()
    check.decompose(stub)
    assert not passed()
    check.decompose(lambda plan, step: decompose(plan, step, restart_hours=False))
    assert not passed() and "hours count from the start" in RESULTS[-1].message


def test_town_rules():
    assert town.importance(town.PARTY) == 8
    assert town.importance("I am reading at the library") == 2
    assert town.importance("My advisor asked me to finish the paper draft this evening") == 6
    assert town.topic("I talked with Klaus at the park") is None  # 'talked' is not the topic 'talk'
    assert town.topic("Klaus is giving a talk about gentrification") == "talk"
    assert town.clock(17 * 60 + 5) == "17:05"
    plans = [sum(e - s for s, e, _, _ in r.plan) for r in town.RESIDENTS]
    assert plans == [13] * len(town.RESIDENTS)  # every plan covers 07:00-20:00


def verdict(rows, a, b, *, touching_separates=False, filter_rows=True, **point):
    picked = [r for r in rows if not filter_rows or all(r.get(key) == value for key, value in point.items())]
    accuracy = {agent: [float(r["accuracy"]) for r in picked if r["agent"] == agent] for agent in (a, b)}
    if not accuracy[a] or not accuracy[b]:
        raise ValueError("no rows")
    above = (lambda x, y: x >= y) if touching_separates else (lambda x, y: x > y)
    if above(min(accuracy[a]), max(accuracy[b])):
        return a
    if above(min(accuracy[b]), max(accuracy[a])):
        return b
    return "within noise"


def test_verdict_passes_and_rejects_touching_ranges_means_and_unfiltered_rows():
    check.verdict(verdict)
    assert passed()
    check.verdict(stub)
    assert not passed()
    check.verdict(lambda *a, **k: verdict(*a, **k, touching_separates=True))
    assert not passed() and "touching ranges" in RESULTS[-1].message
    check.verdict(lambda *a, **k: verdict(*a, **k, filter_rows=False))
    assert not passed() and "match every key" in RESULTS[-1].message

    def by_mean(rows, a, b, **point):      # compares means: says "a" where the seeds' ranges overlap
        picked = [r for r in rows if all(r.get(key) == value for key, value in point.items())]
        mean = {x: sum(r["accuracy"] for r in picked if r["agent"] == x) / max(1, sum(r["agent"] == x for r in picked))
                for x in (a, b)}
        return a if mean[a] > mean[b] else b

    check.verdict(by_mean)
    assert not passed()
