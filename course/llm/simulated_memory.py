"""A simulated day of observations and a question about one of them: episodic memory measured at stated rates.

Notebook 13's town decides everything with rules, so who comes to the party follows from how the
rules were written. Here the mechanism is measured instead. Each task (``"day-000"``, ``"day-001"``,
...) is one agent's day from 07:00 to 21:00, one observation every 10 minutes (84 in all):

* four **facts** ("Klaus told me the book club is at the library tonight"), one for each of the day's
  four events, at random times;
* **distractors** at a stated density: each other slot mentions one of the events with a *wrong*
  place ("Maria said the book club was at the park last month");
* **routine** observations ("I am watering the plants") everywhere else.

At 21:00 the agent is asked where one of the events is ("Where is the book club tonight?"). What it
can answer depends on which ``k`` memories it retrieves, read by simulated models that do not know
the answer and err at stated rates:

* :class:`SimulatedRater` rates each memory's importance when it is stored: what a careful rater
  would say (fact 8, distractor 3, routine 2, reflection 8) or, with probability ``importance_noise``,
  a uniformly random rating 1..10 (``importance_noise = 1`` makes importance useless);
* :class:`SimulatedReader` answers from the retrieved memories: it takes the best-ranked retrieved
  memory that states the event's place tonight (a fact, or a reflection about it) and misreads it
  with probability ``misread`` (a wrong place); with none, it repeats a retrieved distractor's place,
  or guesses one of the eight places uniformly (right with probability 1/8).

Four agents answer the same day: the **last-k window** (the k newest memories), **relevance only**
(plain similarity search), the **memory stream** (the paper's score: recency + importance + relevance,
each min-max normalised, recency 0.995 per game hour) and the **memory stream with reflection** (when
the rated importance since the last reflection passes a threshold, the agent asks where the events
of its three most important recent memories are, retrieves ``k`` memories for each, and the reader
writes what it finds there as a new, recent reflection; retrieval refreshes what it returns).

The models recognise memories by id and kind, never by text; texts matter only to the embedder
(the hashing TF-IDF of :mod:`course.llm.embeddings`, the notebook's, or with ``Rates(embedder="minilm")``
the MiniLM sentence model, to see which findings survive a neural embedder). Randomness is Python's
``random.Random`` seeded with strings, the same draws on every machine; scores are computed in
float64 and rounded to 1e-9 before ranking, so a result is exact for a seed on a machine. (The
embedder works in float32; another processor may round a vector's last bit differently, which could
reorder two memories whose scores agree to ~1e-7: rare, and why the notebook reads a committed table.)
What this measures is the retrieval mechanism (how often the fact reaches the reader at these rates),
not any language model: the rates are inputs.

What it shows, in one line each: a k-window forgets what is not recent; importance helps retrieval
where similarity search fails (with word-overlap embeddings: few memories retrieved, many look-alike
distractors; with MiniLM it no longer fails there) and only while the ratings are mostly right, and
random ratings make it hurt; a reflection can only copy what it
retrieved, so it carries a misreading or a rumour forward as readily as a fact.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field, replace

import numpy as np

from .simulated import probability

__all__ = ["Rates", "Observation", "Memory", "Day", "make_day", "SimulatedRater", "SimulatedReader",
           "stream_scores", "AGENTS", "answer", "run_day", "accuracy", "with_rate"]

SUBJECTS = ("book club", "choir practice", "chess match", "birthday dinner", "pottery class", "town meeting",
            "film night", "bake sale")
PLACES = ("library", "cafe", "park", "town hall", "school gym", "bakery", "community garden", "pub")
NAMES = ("Klaus", "Maria", "Tom", "Ayesha", "Sam", "Eddy")
ROUTINE = ("I am watering the plants", "I am reading the newspaper", "I am cooking lunch", "I am sweeping the floor",
           "I am answering emails", "I am walking the dog", "I am drinking a cup of tea", "I am fixing the fence",
           "I am folding the laundry", "I am writing in my diary", "I am tidying the kitchen", "I am taking a nap")
FACT = "{name} told me the {subject} is at the {place} tonight"
DISTRACTORS = ("{name} asked me whether the {subject} is at the {place} tonight",   # as close to the question as the fact
               "{name} guessed the {subject} is at the {place} tonight",
               "{name} said the {subject} was at the {place} last month",           # further from it
               "I saw an old poster for a {subject} at the {place}")
QUESTION = "Where is the {subject} tonight?"
REFLECTION = "I should remember that the {subject} is at the {place} tonight"
TRUE_IMPORTANCE = {"fact": 8, "distractor": 3, "routine": 2, "reflection": 8}
START, END, STEP = 7 * 60, 21 * 60, 10          # minutes; the question comes at END
EVENTS_PER_DAY = 4
DECAY = 0.995                                   # recency per game hour, the paper's
EMBEDDERS = ("hashing", "minilm")
AGENTS = ("last-k window", "relevance only", "memory stream", "memory stream + reflection")


@dataclass(frozen=True)
class Rates:
    """The stated rates of one setting: retrieval budget k and the three error/noise rates."""

    k: int = 3                        # memories retrieved per question
    distractors: float = 0.2          # probability that a non-fact slot is a distractor
    importance_noise: float = 0.2     # probability that a rating is uniformly random
    misread: float = 0.1              # probability that the reader (and reflector) misreads a memory
    threshold: int = 100              # summed importance that triggers a reflection
    embedder: str = "hashing"         # relevance from "hashing" (the notebook's) or "minilm" (a sentence model)

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        for name in ("distractors", "importance_noise", "misread"):
            probability(name, getattr(self, name))
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise ValueError(f"threshold must be a positive int, got {self.threshold!r}")
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"embedder must be one of {EMBEDDERS}, got {self.embedder!r}")


@dataclass(frozen=True)
class Observation:
    id: int
    minute: int
    text: str
    kind: str                  # "fact", "distractor" or "routine"
    subject: str | None = None
    place: str | None = None


@dataclass
class Memory:
    """A memory in an agent's stream: an observation or a reflection, with its rated importance."""

    id: int
    text: str
    kind: str                  # "fact", "distractor", "routine" or "reflection"
    created: float             # game hours
    last_accessed: float
    importance: int
    subject: str | None = None
    place: str | None = None
    evidence: list = field(default_factory=list)


@dataclass(frozen=True)
class Day:
    task_id: str
    observations: tuple
    subject: str               # the event the question asks about
    answer: str                # its place tonight

    @property
    def question(self) -> str:
        return QUESTION.format(subject=self.subject)


def make_day(task_id: str, seed: int, distractors: float) -> Day:
    """The day of task ``task_id`` for ``seed``: events, places, fact times, distractors, the question."""
    probability("distractors", distractors)
    rng = random.Random(f"{seed}:{task_id}:day")
    subjects = rng.sample(SUBJECTS, EVENTS_PER_DAY)
    places = dict(zip(subjects, rng.sample(PLACES, EVENTS_PER_DAY)))
    slots = list(range(START, END, STEP))
    fact_at = dict(zip(rng.sample(slots, EVENTS_PER_DAY), subjects))
    observations = []
    for i, minute in enumerate(slots):
        if minute in fact_at:
            subject = fact_at[minute]
            text = FACT.format(name=rng.choice(NAMES), subject=subject, place=places[subject])
            observations.append(Observation(i, minute, text, "fact", subject, places[subject]))
        elif rng.random() < distractors:
            subject = rng.choice(subjects)
            wrong = rng.choice([p for p in PLACES if p != places[subject]])
            text = rng.choice(DISTRACTORS).format(name=rng.choice(NAMES), subject=subject, place=wrong)
            observations.append(Observation(i, minute, text, "distractor", subject, wrong))
        else:
            observations.append(Observation(i, minute, rng.choice(ROUTINE), "routine"))
    asked = rng.choice(subjects)
    return Day(task_id, tuple(observations), asked, places[asked])


class SimulatedRater:
    """Rates importance as a careful rater would, except with probability ``noise``: uniform 1..10."""

    def __init__(self, noise: float, rng: random.Random):
        self.noise, self.rng = probability("importance_noise", noise), rng

    def rate(self, kind: str) -> int:
        if kind not in TRUE_IMPORTANCE:
            raise ValueError(f"kind must be one of {sorted(TRUE_IMPORTANCE)}, got {kind!r}")
        return self.rng.randint(1, 10) if self.rng.random() < self.noise else TRUE_IMPORTANCE[kind]


class SimulatedReader:
    """Answers where ``subject`` is from retrieved memories (best first); misreads with probability ``misread``."""

    def __init__(self, misread: float, rng: random.Random):
        self.misread, self.rng = probability("misread", misread), rng

    def read(self, retrieved: list[Memory], subject: str, *, guess: bool = True) -> str | None:
        about = [m for m in retrieved if m.subject == subject]
        stated = [m for m in about if m.kind in ("fact", "reflection")]
        if stated:
            place = stated[0].place
            if self.rng.random() < self.misread:
                return self.rng.choice([p for p in PLACES if p != place])
            return place
        if about:
            return about[0].place                       # a distractor misleads
        return self.rng.choice(PLACES) if guess else None


def all_texts() -> list[str]:
    """Every text a day, a question or a reflection can hold (sorted): what the embedder must cover."""
    texts = set(ROUTINE)
    for subject in SUBJECTS:
        texts.add(QUESTION.format(subject=subject))
        for place in PLACES:
            texts.add(REFLECTION.format(subject=subject, place=place))
            for name in NAMES:
                texts.update(t.format(name=name, subject=subject, place=place) for t in (FACT, *DISTRACTORS))
    return sorted(texts)


@functools.lru_cache(maxsize=2)
def _table(embedder: str) -> dict[str, np.ndarray]:
    """All texts embedded in one call, in a fixed order (so MiniLM's batches, and its padding, are always the
    same), as float64 unit vectors: the notebook's hashing TF-IDF (1024 buckets) or MiniLM."""
    texts = all_texts()
    vectors = _embedder(embedder).embed(texts).double().numpy()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)   # renormalised in float64: a dot product is the cosine
    return dict(zip(texts, vectors))


def _embedding(text: str, embedder: str = "hashing") -> np.ndarray:
    try:
        return _table(embedder)[text]
    except KeyError:
        raise ValueError(f"not a text of this task: {text!r}") from None


@functools.lru_cache(maxsize=2)
def _embedder(kind: str):
    from .embeddings import get_embedder

    if kind not in EMBEDDERS:
        raise ValueError(f"embedder must be one of {EMBEDDERS}, got {kind!r}")
    return get_embedder(kind, dim=1024)          # "minilm" raises ImportError, saying what to install, when absent


def _normalise(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def stream_scores(memories: list[Memory], query: str, now: float, weights=(1.0, 1.0, 1.0),
                  embedder: str = "hashing") -> np.ndarray:
    """The paper's score per memory: w . (N(recency), N(importance), N(relevance)), in float64."""
    recency = DECAY ** (now - np.array([m.last_accessed for m in memories]))
    importance = np.array([float(m.importance) for m in memories])
    q = _embedding(query, embedder)
    relevance = np.array([float(_embedding(m.text, embedder) @ q) for m in memories])   # unit vectors: cosine
    w_rec, w_imp, w_rel = weights
    return w_rec * _normalise(recency) + w_imp * _normalise(importance) + w_rel * _normalise(relevance)


def _retrieve(memories: list[Memory], query: str, now: float, k: int, weights, embedder: str) -> list[Memory]:
    """Top k by score (rounded to 1e-9 so float noise cannot reorder), ties to the newer; refreshes them."""
    if not memories:
        return []
    scores = stream_scores(memories, query, now, weights, embedder)
    order = sorted(range(len(memories)), key=lambda i: (-round(float(scores[i]), 9), -memories[i].created, -i))[:k]
    for i in order:
        memories[i].last_accessed = now
    return [memories[i] for i in order]


def _reflect(stream: list[Memory], now: float, rates: Rates, rater: SimulatedRater, reader: SimulatedReader):
    """Ask where the events of the 3 most important memories since the last reflection are; store what is read."""
    salient = sorted(_since_reflection(stream), key=lambda m: (-m.importance, -m.created))[:3]
    for subject in dict.fromkeys(m.subject for m in salient if m.subject):   # routine memories name no event
        evidence = _retrieve(stream, QUESTION.format(subject=subject), now, rates.k, (1.0, 1.0, 1.0), rates.embedder)
        place = reader.read(evidence, subject, guess=False)
        if place is not None:
            stream.append(Memory(len(stream), REFLECTION.format(subject=subject, place=place), "reflection", now, now,
                                 rater.rate("reflection"), subject, place, [m.id for m in evidence]))


def _since_reflection(stream: list[Memory]) -> list[Memory]:
    last = max((m.created for m in stream if m.kind == "reflection"), default=-math.inf)
    return [m for m in stream if m.kind != "reflection" and m.created > last]


def answer(day: Day, agent: str, rates: Rates, seed: int) -> tuple[str, bool, int]:
    """``agent`` lives through ``day`` and answers its question: (answer, the true place reached the
    reader among the k retrieved, reflections made)."""
    if agent not in AGENTS:
        raise ValueError(f"agent must be one of {AGENTS}, got {agent!r}")
    # the same ratings for every agent on a day (common random numbers); a reader's draws are its own
    rater = SimulatedRater(rates.importance_noise, random.Random(f"{seed}:{day.task_id}:rate"))
    reflector_rater = SimulatedRater(rates.importance_noise, random.Random(f"{seed}:{day.task_id}:rate-reflection"))
    reader = SimulatedReader(rates.misread, random.Random(f"{seed}:{day.task_id}:{agent}:read"))
    reflect = agent == "memory stream + reflection"
    stream: list[Memory] = []
    for obs in day.observations:
        now = obs.minute / 60
        stream.append(Memory(len(stream), obs.text, obs.kind, now, now, rater.rate(obs.kind), obs.subject, obs.place))
        if reflect and sum(m.importance for m in _since_reflection(stream)) > rates.threshold:
            _reflect(stream, now, rates, reflector_rater, reader)
    now = END / 60
    if agent == "last-k window":
        retrieved = sorted(stream, key=lambda m: (-m.created, -m.id))[:rates.k]
    else:
        weights = (0.0, 0.0, 1.0) if agent == "relevance only" else (1.0, 1.0, 1.0)
        retrieved = _retrieve(stream, day.question, now, rates.k, weights, rates.embedder)
    reached = any(m.subject == day.subject and m.place == day.answer and m.kind in ("fact", "reflection")
                  for m in retrieved)
    return reader.read(retrieved, day.subject), reached, sum(m.kind == "reflection" for m in stream)


def run_day(task_id: str, rates: Rates, seed: int) -> dict[str, tuple[bool, bool, int]]:
    """Every agent on one day: agent -> (answered right, true place retrieved, reflections made)."""
    day = make_day(task_id, seed, rates.distractors)
    out = {}
    for agent in AGENTS:
        said, reached, reflections = answer(day, agent, rates, seed)
        out[agent] = (said == day.answer, reached, reflections)
    return out


def accuracy(rates: Rates, seed: int, days: int = 100) -> dict[str, dict[str, float]]:
    """Per agent over ``days`` tasks (day-000 ...): share answered right, share whose true place was
    retrieved, mean reflections a day."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a positive int, got {days!r}")
    totals = {agent: [0, 0, 0] for agent in AGENTS}
    for index in range(days):
        for agent, values in run_day(f"day-{index:03d}", rates, seed).items():
            for j, v in enumerate(values):
                totals[agent][j] += int(v)
    return {agent: {"accuracy": t[0] / days, "retrieved": t[1] / days, "reflections": t[2] / days}
            for agent, t in totals.items()}


def with_rate(rates: Rates, name: str, value) -> Rates:
    """``rates`` with one field changed (a sweep's point)."""
    if name not in Rates.__dataclass_fields__:
        raise ValueError(f"no rate named {name!r}; expected one of {list(Rates.__dataclass_fields__)}")
    return replace(rates, **{name: value})
