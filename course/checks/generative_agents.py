"""Checks for notebook 13 (Generative Agents): retrieval scoring, retrieval with access updates,
reflection with evidence pointers, recursive plan decomposition, and a verdict over seeds that the
seeds' spread allows (on the simulated-memory table)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import bench, llm
from .core import CheckFailed, assert_close, check, require


def _reference_scores(last_accessed, importance, embeddings, query, now, weights=(1.0, 1.0, 1.0), decay=0.995):
    def normalise(x):
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else torch.zeros_like(x)

    recency = decay ** (now - last_accessed)
    relevance = torch.nn.functional.cosine_similarity(embeddings, query[None, :], dim=1)
    w = weights
    return w[0] * normalise(recency) + w[1] * normalise(importance) + w[2] * normalise(relevance)


# --- 13.1 -----------------------------------------------------------------------------------------


@check
def retrieval_scores(fn):
    """``fn(last_accessed, importance, embeddings, query, now, weights=, decay=)`` with min-max terms."""
    require(callable(fn), f"retrieval_scores must be a function, got {type(fn).__name__}")
    cases = []
    # 3 memories, 2-d embeddings: every term varies
    cases.append(dict(last_accessed=torch.tensor([8.0, 12.0, 15.5]), importance=torch.tensor([8.0, 2.0, 5.0]),
                      embeddings=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), query=torch.tensor([1.0, 0.2]),
                      now=16.0, weights=(1.0, 1.0, 1.0)))
    # importance constant: that term must contribute 0, not nan
    cases.append(dict(last_accessed=torch.tensor([7.0, 9.0, 10.0, 16.0]), importance=torch.full((4,), 3.0),
                      embeddings=torch.tensor([[1.0, 2.0], [2.0, 1.0], [-1.0, 0.5], [0.3, 0.3]]),
                      query=torch.tensor([0.0, 1.0]), now=16.0, weights=(0.5, 2.0, 1.5)))
    # one memory: every term is constant, the score is 0
    cases.append(dict(last_accessed=torch.tensor([10.0]), importance=torch.tensor([9.0]),
                      embeddings=torch.tensor([[0.6, 0.8]]), query=torch.tensor([1.0, 0.0]), now=11.0,
                      weights=(1.0, 1.0, 1.0)))
    # larger random case, relevance only vs all three
    g = torch.Generator().manual_seed(0)
    n, d = 20, 16
    big = dict(last_accessed=torch.rand(n, generator=g) * 10 + 7, importance=torch.randint(1, 11, (n,), generator=g).float(),
               embeddings=torch.randn(n, d, generator=g), query=torch.randn(d, generator=g), now=18.0)
    cases.append(dict(big, weights=(0.0, 0.0, 1.0)))
    cases.append(dict(big, weights=(1.0, 1.0, 1.0)))
    for case in cases:
        got = fn(case["last_accessed"], case["importance"], case["embeddings"], case["query"], case["now"],
                 weights=case["weights"])
        want = _reference_scores(case["last_accessed"], case["importance"], case["embeddings"], case["query"],
                                 case["now"], case["weights"])
        # float32 arithmetic on values in [0, 3]: 1e-5 absolute is ~100x float32 rounding
        assert_close(torch.as_tensor(got), want, atol=1e-5, rtol=0, name=f"scores of {len(want)} memories",
                     inputs={k: v for k, v in case.items() if k != "embeddings"},
                     hint="normalise each term to [0, 1] over the memories (min-max) before weighting; a constant "
                          "term gives 0; recency is decay ** (now - last_accessed) in hours")
    return "5 cases: all terms varying, a constant term, one memory, 20 random memories"


# --- 13.2 -----------------------------------------------------------------------------------------


def _stream(stream_cls, items):
    stream = stream_cls()
    for description, when in items:
        stream.add(description, when)
    return stream


@check
def retrieve(fn, stream_cls):
    """``fn(stream, query_text, now, k=, weights=)``: best k, ties to the newest, access times refreshed."""
    require(callable(fn), f"retrieve must be a function, got {type(fn).__name__}")
    embedder = llm.get_embedder("hashing")
    require(fn(stream_cls(), "anything", 12.0, k=3) == [], "an empty stream should give []")
    items = [("Isabella is hosting a Valentine's Day party at Hobbs Cafe this evening", 8.0),
             ("I am reading at the library", 9.0), ("I had coffee at Hobbs Cafe", 10.0),
             ("My advisor asked me to finish the paper draft this evening", 15.0),
             ("I am jogging in the park", 15.5)]
    stream = _stream(stream_cls, items)
    query = "What will I do this evening?"
    scores = _reference_scores(torch.tensor([m.last_accessed for m in stream]),
                               torch.tensor([float(m.importance) for m in stream]),
                               torch.stack([m.embedding for m in stream]), embedder.embed([query])[0], 16.0)
    want = sorted(range(len(stream)), key=lambda i: (-float(scores[i]), -stream[i].created))[:2]
    got = fn(stream, query, 16.0, k=2)
    require(isinstance(got, list) and [m.id for m in got] == want,
            f"top 2 for {query!r}: expected memory ids {want}, got {[getattr(m, 'id', m) for m in got] if isinstance(got, list) else got!r}"
            "\n  hint: sort by score, highest first, and return the Memory objects")
    refreshed = [m.id for m in stream if m.last_accessed == 16.0]
    require(sorted(refreshed) == sorted(want), f"last_accessed should become now (16.0) on exactly the returned "
            f"memories {want}; it is 16.0 on {refreshed}")
    got = fn(stream, query, 17.0, k=10)
    require(len(got) == len(stream), f"k larger than the stream should return all {len(stream)} memories, got {len(got)}")

    twins = _stream(stream_cls, [("I saw a cat", 9.0), ("I saw a cat", 11.0), ("I saw a cat", 10.0)])
    for m in twins:
        m.last_accessed = 12.0
    got = fn(twins, "cat", 12.0, k=3)
    require([m.created for m in got] == [11.0, 10.0, 9.0],
            f"equal scores must be ordered newest first (created 11, 10, 9), got {[m.created for m in got]}")
    weights = (0.0, 0.0, 1.0)
    got = fn(stream, "Hobbs Cafe", 18.0, k=1, weights=weights)
    best = max(range(len(stream)), key=lambda i: (float(torch.nn.functional.cosine_similarity(
        stream[i].embedding, embedder.embed(["Hobbs Cafe"])[0], dim=0)), stream[i].created))
    require([m.id for m in got] == [best], f"with weights (0, 0, 1) only relevance counts: expected memory {best}, "
            f"got {[m.id for m in got]}\n  hint: pass weights on to retrieval_scores")
    return "empty stream, top-k order, access refresh, k > n, ties, weights"


# --- 13.3 -----------------------------------------------------------------------------------------


@check
def maybe_reflect(fn, stream_cls):
    """``fn(stream, now, threshold=, k=)``: strict threshold, reflections excluded, evidence pointers."""
    require(callable(fn), f"maybe_reflect must be a function, got {type(fn).__name__}")
    stream = stream_cls()
    stream.add("Isabella is hosting a Valentine's Day party at Hobbs Cafe this evening", 9.0)  # importance 8
    stream.add("Maria told me: Isabella is hosting a Valentine's Day party", 10.0)             # importance 8
    stream.add("I am reading at the library", 11.0)                                              # importance 2
    total = sum(m.importance for m in stream)
    got = fn(stream, 12.0, threshold=total, k=2)
    require(got == [] and len(stream) == 3, f"the summed importance ({total}) equals the threshold: no reflection "
            f"yet (it must *pass* the threshold), got {len(got) if isinstance(got, list) else got!r} new memories")
    got = fn(stream, 12.0, threshold=total - 1, k=2)
    require(isinstance(got, list) and len(got) >= 1, f"summed importance {total} > threshold {total - 1}: expected at "
            f"least one reflection, got {got!r}")
    require(all(m.kind == "reflection" for m in got) and all(m in stream for m in got),
            "new reflections must be added to the stream with kind='reflection'")
    first = got[0]
    require("party" in first.description and first.created == 12.0,
            f"the first question is about the party (the most important topic); got {first.description!r}")
    require(len(first.evidence) == 2 and all(isinstance(i, int) and 0 <= i < 3 for i in first.evidence),
            f"a reflection should point at the ids of the k=2 memories retrieved for its question, got "
            f"{first.evidence!r}")
    require(all(stream[i].last_accessed == 12.0 for i in first.evidence),
            "the evidence should have been retrieved (its last_accessed becomes now)")
    again = fn(stream, 12.5, threshold=0, k=2)
    require(again == [], f"right after reflecting, nothing new has been observed: expected [], got {len(again)} "
            "reflection(s)\n  hint: count only memories created after the newest reflection, and never reflections")
    stream.add("I am jogging in the park", 13.0)
    stream.add("I talked with Klaus at the park", 13.5)
    got = fn(stream, 14.0, threshold=3, k=2)
    require(got == [] and math.isclose(sum(m.importance for m in stream if m.created > 12.0), 4),
            f"two routine memories (importance 2 + 2 > 3) name no topic, so there is no question to reflect on; "
            f"expected [], got {got!r}")
    stream.add("Klaus told me: the town council election is next week", 14.5)
    got = fn(stream, 15.0, threshold=8, k=2)
    require(len(got) == 1 and "election" in got[0].description,
            f"new importance 2 + 2 + 5 = 9 > 8 with one topic (the election): expected one reflection about it, "
            f"got {[m.description for m in got] if isinstance(got, list) else got!r}")
    return "strict threshold, evidence pointers, reflections not counted, only new memories counted"


# --- 13.4 -----------------------------------------------------------------------------------------


@check
def decompose(fn):
    """``fn(day_plan, step)``: day plan -> hours -> step-minute blocks, contiguous, with errors."""
    require(callable(fn), f"decompose must be a function, got {type(fn).__name__}")
    plan = [(7, 8, "breakfast", "home"), (8, 10, "work", "cafe")]
    got = fn(plan, 30)
    want = [(420, 450, "breakfast (hour 1, part 1)", "home"), (450, 480, "breakfast (hour 1, part 2)", "home"),
            (480, 510, "work (hour 1, part 1)", "cafe"), (510, 540, "work (hour 1, part 2)", "cafe"),
            (540, 570, "work (hour 2, part 1)", "cafe"), (570, 600, "work (hour 2, part 2)", "cafe")]
    require(got == want, f"two activities, step 30: expected\n    {want}\n  got\n    {got!r}"[:900]
            + "\n  hint: hours count from the start of each activity; parts restart every hour")
    got = fn(plan, 60)
    require([b[:2] for b in got] == [(420, 480), (480, 540), (540, 600)], f"step 60 gives one block per hour, got "
            f"{[b[:2] for b in got]}")
    got = fn([(7, 20, "day", "town")], 10)
    require(len(got) == 78 and got[0][0] == 420 and got[-1][1] == 1200
            and all(a[1] == b[0] for a, b in zip(got, got[1:])),
            "07:00-20:00 in 10-minute steps should give 78 contiguous blocks")
    for bad_plan, step, why in (([(7, 8, "a", "x"), (9, 10, "b", "y")], 30, "a gap between 8 and 9"),
                                ([(7, 9, "a", "x"), (8, 10, "b", "y")], 30, "an overlap"),
                                (plan, 7, "step 7, which does not divide 60")):
        try:
            fn(bad_plan, step)
        except ValueError:
            continue
        raise CheckFailed(f"a plan with {why} should raise ValueError")
    return "two activities, hour blocks, a full day, gap, overlap, bad step"


# --- 13.5 -----------------------------------------------------------------------------------------

MEMORY_CSV = Path(__file__).resolve().parents[1] / "results" / "generative_agents_memory.csv"


def _reference_verdict(rows, a, b, point):
    picked = [r for r in rows if all(r.get(key) == value for key, value in point.items())]
    per = {agent: [float(r["accuracy"]) for r in picked if r["agent"] == agent] for agent in (a, b)}
    if not per[a] or not per[b]:
        raise ValueError(f"no rows for {a!r} and {b!r} at {point}")
    if min(per[a]) > max(per[b]):
        return a
    if min(per[b]) > max(per[a]):
        return b
    return "within noise"


def _rows(point, values):
    return [{**point, "agent": agent, "seed": seed, "accuracy": v}
            for agent, vs in values.items() for seed, v in enumerate(vs)]


@check
def verdict(fn):
    """``fn(rows, a, b, **point)``: a, b or "within noise", from the rows matching point, by the seeds' ranges."""
    require(callable(fn), f"verdict must be a function, got {type(fn).__name__}")
    at_k1, at_k3 = {"sweep": "k", "value": 1}, {"sweep": "k", "value": 3}
    rows = (_rows(at_k1, {"stream": [0.60, 0.55, 0.58], "window": [0.10, 0.20, 0.15]})
            + _rows(at_k3, {"stream": [0.70, 0.80, 0.75], "window": [0.78, 0.90, 0.85]}))
    cases = [(("stream", "window"), at_k1, "stream", "every seed of the stream above every seed of the window"),
             (("window", "stream"), at_k1, "stream", "the same, with the agents named the other way round"),
             (("stream", "window"), at_k3, "within noise", "ranges 0.70-0.80 and 0.78-0.90 overlap"),
             (("a", "b"), {"sweep": "x", "value": 0},
              "within noise", "min of a (0.5) equals max of b (0.5): touching ranges are not separated"),
             (("a", "b"), {"sweep": "x", "value": 1}, "b", "every seed of b above every seed of a")]
    rows += _rows({"sweep": "x", "value": 0}, {"a": [0.5, 0.6], "b": [0.4, 0.5]})
    rows += _rows({"sweep": "x", "value": 1}, {"a": [0.2, 0.3], "b": [0.31, 0.4]})
    for (a, b), point, want, why in cases:
        got = fn(rows, a, b, **point)
        require(got == want, f"verdict(rows, {a!r}, {b!r}, **{point}): expected {want!r} ({why}), got {got!r}"
                "\n  hint: use only the rows whose fields match every key of point; a wins only when its lowest "
                "seed is above the other's highest")
    try:
        fn(rows, "stream", "oracle", sweep="k", value=1)
    except ValueError:
        pass
    else:
        raise CheckFailed("an agent with no rows at that point (here 'oracle') should raise ValueError, "
                          "not return a verdict from nothing")
    real, _ = bench.load_csv(MEMORY_CSV)
    for point in ({"sweep": "k", "value": 1}, {"sweep": "importance_noise", "value": 1.0},
                  {"sweep": "distractors", "value": 0.6}):
        want = _reference_verdict(real, "memory stream", "relevance only", point)
        got = fn(real, "memory stream", "relevance only", **point)
        require(got == want, f"on the committed table at {point}: expected {want!r}, got {got!r}")
    return "win, loss, overlap, touching ranges, filtering by point, no rows, 3 points of the committed table"
