"""Offline policies and task sets written for the agent notebooks.

Each module holds a small task set with checkable answers and the rule-based policies that stand
in for a language model on exactly those tasks (see :class:`course.llm.RuleModel`). The policies
make mistakes on purpose, of the kinds the papers' mechanisms exist to catch (a crash, an
infinite loop, a silently wrong answer, an interface that drifts between roles), and they are
written down here where anyone can read them. A notebook's measured success rates therefore show
how well each *orchestration* recovers from those mistakes; they say nothing about how often a real
model makes them. Every notebook shows the one line that swaps in a real model.
"""

from __future__ import annotations

from ..chat import Message


def speaker(message: Message) -> str:
    """Who wrote a message: its ``name``, else its role."""
    return message.name or message.role


def last_from(messages: list[Message], name: str) -> Message | None:
    for m in reversed(messages):
        if speaker(m) == name:
            return m
    return None
