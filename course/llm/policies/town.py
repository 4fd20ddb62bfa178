"""Notebook 13 (Generative Agents): a five-person town, one day, and the rule-based stand-ins for the
language model calls of the architecture.

The town: Isabella runs Hobbs Cafe and hosts a Valentine's Day party there from 17:00 to 19:00;
nobody else knows at 7:00. Four neighbours follow their day plans (home, library, park, store, cafe)
and each starts with a piece of news of their own. In the afternoon each neighbour gets a competing
commitment for the evening (an advisor, a study group, inventory, an editor), so an agent who knows
about the party may still not go: what decides is which memory wins retrieval when the agent plans
its evening at 16:00.

The model calls of the paper are replaced by rules written here:

* :func:`importance` (served as a chat model by :func:`importance_policy`, with the paper's prompt
  :data:`IMPORTANCE_PROMPT`): a keyword lexicon (party 8, an obligation 6, news 4-5, routine 2), standing
  in for the model's 1-10 poignancy rating;
* :func:`reflection_questions` and :func:`insight`: the salient topics of recent memories, weighted
  by importance, and one templated insight per topic, citing its evidence;
* :func:`share` (what to say in a conversation) and :func:`evening_choice` (plan revision): the
  retrieved memory with the best score decides.

Nothing here is a language model; the notebook says so and measures the architecture around it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

PARTY = ("Isabella is hosting a Valentine's Day party at Hobbs Cafe this evening from 5pm to 7pm, "
         "and everyone is invited")
CAFE = "Hobbs Cafe"
PARTY_START, PARTY_END = 17 * 60, 19 * 60
DAY_START, DAY_END, STEP = 7 * 60, 20 * 60, 10
EVENING_QUERY = "What will I do this evening? my plans for tonight"
NEWS_QUERY = "news worth telling a neighbour: an event, a party, an invitation, a talk, a sale, an election"

TOPICS = {"party": ("party", "valentine"), "exam": ("exam",), "talk": ("talk", "gentrification"),
          "sale": ("sale",), "election": ("election",), "work": ("paper", "inventory", "article", "study group")}
_TOPIC_PATTERNS = {name: re.compile(r"\b(" + "|".join(words) + r")\b") for name, words in TOPICS.items()}
_LEXICON = [(r"\bparty\b|valentine", 8), (r"asked me|promised|wants the|must finish|meets this evening", 6),
            (r"\bexam\b", 6), (r"\belection\b|\btalk\b", 5), (r"\bsale\b", 4), (r"told me", 4),
            (r"\btalked with\b|\bsaw\b", 2)]


@dataclass(frozen=True)
class Resident:
    name: str
    home: str
    plan: tuple  # ((start_hour, end_hour, activity, place), ...) covering 7:00-20:00
    news: str
    commitment: tuple  # (minute it happens, text)


RESIDENTS = [
    Resident("Isabella", "Isabella's apartment",
             ((7, 8, "getting ready", "Isabella's apartment"), (8, 16, "running the cafe", CAFE),
              (16, 17, "decorating the cafe", CAFE), (17, 19, "hosting the Valentine's Day party", CAFE),
              (19, 20, "resting", "Isabella's apartment")),
             PARTY, (15 * 60, "I must finish decorating Hobbs Cafe before the party this evening")),
    Resident("Maria", "the dormitory",
             ((7, 9, "reading", "the dormitory"), (9, 12, "studying", "the library"), (12, 13, "having lunch", CAFE),
              (13, 15, "studying", "the library"), (15, 17, "jogging", "the park"),
              (17, 20, "studying", "the dormitory")),
             "There is a chemistry exam on Friday", (15 * 60, "My study group meets this evening in the dormitory")),
    Resident("Klaus", "the dormitory",
             ((7, 8, "getting ready", "the dormitory"), (8, 12, "researching gentrification", "the library"),
              (12, 13, "having lunch", CAFE), (13, 17, "writing his paper", "the library"),
              (17, 20, "writing his paper", "the library")),
             "Klaus is giving a talk about gentrification at the library tomorrow",
             (15 * 60 + 30, "My advisor asked me to finish the paper draft this evening")),
    Resident("Tom", "Tom's house",
             ((7, 8, "having breakfast", "Tom's house"), (8, 12, "running the store", "Harvey Oak Supply"),
              (12, 13, "eating lunch", "the park"), (13, 17, "running the store", "Harvey Oak Supply"),
              (17, 20, "doing inventory", "Harvey Oak Supply")),
             "Harvey Oak Supply has a sale on garden tools this week",
             (15 * 60 + 30, "I promised to do the inventory at the store this evening")),
    Resident("Ayesha", "Ayesha's flat",
             ((7, 9, "writing", "Ayesha's flat"), (9, 11, "interviewing customers", CAFE),
              (11, 13, "taking notes on a walk", "the park"), (13, 15, "buying supplies", "Harvey Oak Supply"),
              (15, 17, "writing her article", "the library"), (17, 20, "editing her article", "Ayesha's flat")),
             "The town council election is next week",
             (16 * 60 - 10, "My editor wants the article on the election this evening")),
]
PLACES = [CAFE, "the library", "the park", "Harvey Oak Supply"]


def clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def importance(description: str) -> int:
    """1-10 from a keyword lexicon (the highest matching rule), 2 for anything routine."""
    text = description.lower()
    score = max((value for pattern, value in _LEXICON if re.search(pattern, text)), default=2)
    return max(1, min(10, score))


def mentions_party(description: str) -> bool:
    return bool(re.search(r"\bparty\b", description.lower()))


def topic(description: str) -> str | None:
    text = description.lower()
    for name, pattern in _TOPIC_PATTERNS.items():
        if pattern.search(text):
            return name
    return None


def reflection_questions(recent: list, limit: int = 2) -> list[str]:
    """The most salient topics among ``recent`` memories (summed importance), as questions."""
    weight: dict[str, int] = {}
    for memory in recent:
        t = topic(memory.description)
        if t is not None:
            weight[t] = weight.get(t, 0) + memory.importance
    ranked = sorted(weight, key=lambda t: (-weight[t], t))[:limit]
    return [f"What do I think about the {t}?" for t in ranked]


def insight(question: str, evidence: list) -> tuple[str, int]:
    """One insight per question, templated, with the importance of its strongest evidence."""
    t = question.removeprefix("What do I think about the ").removesuffix("?")
    strongest = max((m.importance for m in evidence), default=2)
    if t == "party" and any(mentions_party(m.description) for m in evidence):
        return ("Isabella's Valentine's Day party at Hobbs Cafe this evening matters to me: "
                "I want to go, and my friends should hear about it", max(strongest, 8))
    return f"I keep coming back to the {t}; it is on my mind", strongest


def is_news(memory) -> bool:
    return memory.kind == "observation" and topic(memory.description) in ("party", "exam", "talk", "sale", "election")


def share(retrieved: list, already_told: set) -> str | None:
    """What a speaker tells a listener: the best-ranked retrieved piece of news not told to them yet."""
    for memory in retrieved:
        text = memory.description.split(" told me: ", 1)[-1]
        if is_news(memory) and text not in already_told:
            return text
    return None


def evening_choice(retrieved: list) -> bool:
    """Plan revision at 16:00: go to the party iff the best retrieved memory about the evening is the party."""
    evening = [m for m in retrieved if "evening" in m.description.lower() or "tonight" in m.description.lower()]
    return bool(evening) and mentions_party(evening[0].description)


IMPORTANCE_PROMPT = ("On the scale of 1 to 10, where 1 is purely mundane (e.g., brushing teeth, making bed) and 10 "
                     "is extremely poignant (e.g., a break up, college acceptance), rate the likely poignancy of the "
                     "following memory. Reply with JSON only: {\"rating\": <integer 1-10>}.")


def importance_policy(messages) -> str:
    """The offline importance rater: reads 'Memory: ...' from the last message, answers with the lexicon."""
    text = messages[-1].content
    if not text.startswith("Memory: "):
        return "I am the course's offline importance rater; send 'Memory: <description>'."
    return json.dumps({"rating": importance(text.removeprefix("Memory: "))})
