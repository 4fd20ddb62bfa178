"""Notebook 17 (MiRA): a long-horizon world whose success needs a sequence of milestones, subgoal
(potential-based) reward shaping, tabular RL on the CPU, and an online agent with a subgoal checker.

* :class:`MilestoneWorld`: rooms joined by locked doors on a grid. Success needs the milestones in
  order: pick up key A, open door A, pick up key B, open door B, reach the exit G. The state is
  ``(cell, stage)`` where ``stage`` counts the milestones done, so the MDP is small and tabular.
  An episode has a step budget (``max_steps``) and reports when it runs out.
* :func:`tabular_mdp` turns a world into arrays ``P (S, A, S)`` and expected rewards ``R (S, A)``
  for value iteration, with an absorbing ``done`` state (potential 0) after the exit.
* :func:`train_q_learning`: epsilon-greedy tabular Q-learning with a pluggable TD update and a
  pluggable reward (sparse or shaped), seeded, returning per-episode success and the stage where
  each episode stalled.
* The online part: :func:`observation` (a text view of the world), :func:`planner_policy` (decomposes
  the task into subgoals as JSON) and :func:`navigator_policy` (moves towards the exit or the
  current subgoal) are rule-based stand-ins for a language model (see :class:`course.llm.RuleModel`).
  The navigator makes two mistakes on purpose, of the kinds the paper's planner and checker exist to
  catch: told only the final goal it walks straight at the exit and keeps bumping into the locked
  door; and it is distractible: a coin next to it (``DISTRACTION_RADIUS``) pulls it off its path,
  and since the coin stays, it keeps returning to it, unless its prompt carries a reminder of the
  current subgoal.
"""

from __future__ import annotations

import json
import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

ACTIONS = ("up", "down", "left", "right")
MOVES = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
MILESTONES = ("pick up key A", "open door A", "pick up key B", "open door B", "reach the exit")
#: the fact an observer checks to know a milestone is done
FACTS = {"pick up key A": "has key A", "open door A": "door A open", "pick up key B": "has key B",
         "open door B": "door B open", "reach the exit": "at exit"}

# Legend: '#' wall, 'S' start, 'a'/'b' keys A/B, 'A'/'B' doors (walls until opened with their key),
# 'G' exit, 'c' a coin (only the online navigator cares about coins), '.' floor.
THREE_ROOMS = (
    "#################",
    "#.....#....#....#",
    "#.....#....#....#",
    "#.S...A....B..G.#",
    "#.....#....#....#",
    "#..a..#..b.#....#",
    "#################",
)
TWO_ROOMS = (
    "#########",
    "#S..#...#",
    "#...A..G#",
    "#.a.#...#",
    "#########",
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class StepResult:
    state: tuple
    reward: float
    terminal: bool   # reached the exit
    truncated: bool  # the step budget ran out
    info: dict = field(default_factory=dict)


class MilestoneWorld:
    """A grid of rooms and locked doors; ``stage`` = milestones done (0..len(milestones)-1 before the exit)."""

    def __init__(self, layout: Sequence[str] = THREE_ROOMS, *, max_steps: int = 150) -> None:
        if isinstance(layout, str) or not layout or not all(isinstance(r, str) for r in layout):
            raise ValueError("layout must be a non-empty list of equal-length strings")
        _require(len({len(r) for r in layout}) == 1, "layout rows must all have the same length")
        _require(isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps >= 1,
                 f"max_steps must be a positive int, got {max_steps!r}")
        self.layout = tuple(layout)
        self.width, self.height = len(layout[0]), len(layout)
        cells = {ch: [] for ch in "SaAbBGc"}
        for y, row in enumerate(layout):
            for x, ch in enumerate(row):
                _require(ch in "#.SaAbBGc", f"layout has an unknown character {ch!r} at ({x}, {y})")
                if ch in cells:
                    cells[ch].append((x, y))
        for ch in "SaAG":
            _require(len(cells[ch]) == 1, f"layout needs exactly one {ch!r}, found {len(cells[ch])}")
        _require(len(cells["b"]) == len(cells["B"]) <= 1, "layout needs key 'b' and door 'B' together, or neither")
        self.start, self.exit = cells["S"][0], cells["G"][0]
        # milestone i: (cell, kind); kinds alternate key, door, ..., then the exit
        self.targets = [(cells["a"][0], "key"), (cells["A"][0], "door")]
        if cells["b"]:
            self.targets += [(cells["b"][0], "key"), (cells["B"][0], "door")]
        self.targets.append((self.exit, "exit"))
        self.milestones = list(MILESTONES[:len(self.targets) - 1]) + [MILESTONES[-1]]
        self.coins = frozenset(cells["c"])
        self.max_steps = max_steps
        self.n_stages = len(self.targets)  # stages 0 .. n_stages - 1 are live; the exit ends the episode
        self.n_cells = self.width * self.height
        self.n_states = self.n_cells * self.n_stages
        self.reset()

    # --- states --------------------------------------------------------------------------------------
    def index(self, state: tuple) -> int:
        (x, y), stage = state
        return stage * self.n_cells + y * self.width + x

    def wall(self, cell: tuple, stage: int) -> bool:
        x, y = cell
        if not (0 <= x < self.width and 0 <= y < self.height):
            return True
        ch = self.layout[y][x]
        if ch == "#":
            return True
        for i, (target, kind) in enumerate(self.targets):
            if kind == "door" and target == cell:
                return stage < i  # a door is a wall until you stand before it holding its key (stage == i)
        return False

    def transition(self, state: tuple, action: int) -> tuple[tuple, bool]:
        """Deterministic dynamics: (next state, reached the exit)."""
        if not (isinstance(action, (int, np.integer)) and 0 <= int(action) < len(ACTIONS)):
            raise ValueError(f"action must be an int in 0..{len(ACTIONS) - 1}, got {action!r}")
        (x, y), stage = state
        dx, dy = MOVES[ACTIONS[int(action)]]
        cell = (x + dx, y + dy)
        if self.wall(cell, stage):
            cell = (x, y)
        target, kind = self.targets[stage]
        if cell == target:
            if kind == "exit":
                return (cell, stage), True
            stage += 1
        return (cell, stage), False

    def reset(self) -> tuple:
        self.state, self.steps = (self.start, 0), 0
        return self.state

    def step(self, action: int, reward_fn: Callable | None = None) -> StepResult:
        """One move. ``reward_fn(state, next_state, terminal)``: default sparse (1 at the exit)."""
        before = self.state
        self.state, terminal = self.transition(self.state, action)
        self.steps += 1
        reward = (reward_fn or sparse_reward)(before, self.state, terminal)
        truncated = not terminal and self.steps >= self.max_steps
        info = {"stage": self.state[1]}
        if truncated:
            info["stopped"] = (f"step budget spent: {self.max_steps} steps, stalled at stage {self.state[1]} "
                               f"({self.milestones[self.state[1]]!r} not done)")
        return StepResult(self.state, reward, terminal, truncated, info)

    def facts(self, state: tuple | None = None, terminal: bool = False) -> set[str]:
        """What an observer can verify about a state: {'has key A', 'door A open', ..., 'at exit'}."""
        stage = (state or self.state)[1]
        out = {FACTS[m] for m in self.milestones[:stage]}
        if terminal:
            out.add(FACTS["reach the exit"])
        return out

    def render(self, state: tuple | None = None, coins=()) -> str:
        (px, py), stage = state or self.state
        rows = []
        for y, row in enumerate(self.layout):
            line = []
            for x, ch in enumerate(row):
                if (x, y) == (px, py):
                    line.append("@")
                elif ch == "c":
                    line.append("c" if (x, y) in coins else ".")
                elif ch in "aAbB":
                    i = next(i for i, (t, _) in enumerate(self.targets) if t == (x, y))
                    line.append(ch if stage <= i else ".")
                elif ch == "S":
                    line.append(".")
                else:
                    line.append(ch)
            rows.append("".join(line))
        return "\n".join(rows)


def sparse_reward(state, next_state, terminal) -> float:
    return 1.0 if terminal else 0.0


def stage_potential(world: MilestoneWorld) -> Callable[[tuple], float]:
    """Phi(s) = milestones done / number of milestones: 0 at the start, below 1 before the exit."""
    return lambda state: state[1] / world.n_stages


# --- exact solution of a small world ---------------------------------------------------------------


def tabular_mdp(world: MilestoneWorld, reward: Callable[[tuple, tuple, bool], float] = sparse_reward):
    """``P (S+1, A, S+1)`` and expected rewards ``R (S+1, A)``; the last state is an absorbing ``done``.

    ``reward(state, next_state, terminal)`` is evaluated on every transition (``next_state`` is the
    exit cell when ``terminal``); the done state loops on itself with reward 0.
    """
    S, A = world.n_states + 1, len(ACTIONS)
    P = np.zeros((S, A, S))
    R = np.zeros((S, A))
    for stage in range(world.n_stages):
        for y in range(world.height):
            for x in range(world.width):
                state = ((x, y), stage)
                s = world.index(state)
                for a in range(A):
                    nxt, terminal = world.transition(state, a)
                    P[s, a, S - 1 if terminal else world.index(nxt)] = 1.0
                    R[s, a] = reward(state, nxt, terminal)
    P[S - 1, :, S - 1] = 1.0
    return P, R


def shaped(reward: Callable, potential: Callable, gamma: float, shaping: Callable) -> Callable:
    """Wrap ``reward`` with ``shaping(r, phi_s, phi_next, gamma, terminal)`` (the learner's function)."""
    def fn(state, next_state, terminal):
        return shaping(reward(state, next_state, terminal), potential(state), potential(next_state), gamma, terminal)
    return fn


# --- tabular Q-learning ----------------------------------------------------------------------------


@dataclass
class QHistory:
    success: list = field(default_factory=list)     # per episode: reached the exit
    stage: list = field(default_factory=list)       # per episode: milestones done when it ended
    steps: list = field(default_factory=list)
    stopped: list = field(default_factory=list)     # the budget message of episodes that ran out


def train_q_learning(world: MilestoneWorld, *, update: Callable, reward: Callable = sparse_reward,
                     episodes: int = 300, alpha: float = 0.5, gamma: float = 0.99, epsilon: float = 0.1,
                     seed: int = 0, q_init: float = 0.0) -> tuple[np.ndarray, QHistory]:
    """Epsilon-greedy tabular Q-learning; greedy ties are broken at random (seeded).

    ``update(Q, s, a, r, s_next, terminal, alpha, gamma)`` changes ``Q`` in place (the TD update).
    """
    _require(isinstance(episodes, int) and episodes >= 1, f"episodes must be a positive int, got {episodes!r}")
    _require(0 < alpha <= 1, f"alpha must be in (0, 1], got {alpha!r}")
    _require(0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma!r}")
    _require(0 <= epsilon <= 1, f"epsilon must be in [0, 1], got {epsilon!r}")
    rng = random.Random(seed)
    Q = np.full((world.n_states, len(ACTIONS)), float(q_init))
    history = QHistory()
    for _ in range(episodes):
        state = world.reset()
        while True:
            s = world.index(state)
            if rng.random() < epsilon:
                a = rng.randrange(len(ACTIONS))
            else:
                best = Q[s].max()
                a = rng.choice([i for i in range(len(ACTIONS)) if Q[s, i] == best])
            result = world.step(a, reward)
            update(Q, s, a, result.reward, world.index(result.state), result.terminal, alpha, gamma)
            state = result.state
            if result.terminal or result.truncated:
                history.success.append(result.terminal)
                history.stage.append(len(world.targets) if result.terminal else state[1])
                history.steps.append(world.steps)
                history.stopped.append(result.info.get("stopped"))
                break
    return Q, history


def greedy_rollout(world: MilestoneWorld, Q: np.ndarray) -> tuple[bool, int, int]:
    """Follow argmax Q (first best action) from the start: (reached the exit, stage, steps)."""
    state = world.reset()
    while True:
        result = world.step(int(np.argmax(Q[world.index(state)])))
        state = result.state
        if result.terminal or result.truncated:
            return result.terminal, (len(world.targets) if result.terminal else state[1]), world.steps


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    _require(isinstance(window, int) and window >= 1, f"window must be a positive int, got {window!r}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += float(v)
        if i >= window:
            total -= float(values[i - window])
        out.append(total / min(i + 1, window))
    return out


# --- the online agent: planner, navigator, layouts ---------------------------------------------------


def random_layout(seed: int, coins: int = 2) -> tuple[str, ...]:
    """A three-room layout with the doors, keys, exit and ``coins`` coins placed at random (seeded)."""
    rng = random.Random(seed)
    grid = [list(r.replace("a", ".").replace("b", ".").replace("A", "#").replace("B", "#").replace("G", ".")
                 .replace("S", ".")) for r in THREE_ROOMS]
    grid[rng.randint(1, 5)][6] = "A"
    grid[rng.randint(1, 5)][11] = "B"
    room1 = [(x, y) for x in range(1, 6) for y in range(1, 6)]
    room2 = [(x, y) for x in range(7, 11) for y in range(1, 6)]
    room3 = [(x, y) for x in range(12, 16) for y in range(1, 6)]
    start, key_a = rng.sample(room1, 2)
    key_b = rng.choice(room2)
    exit_ = rng.choice(room3)
    used = {start, key_a, key_b, exit_}
    for ch, (x, y) in (("S", start), ("a", key_a), ("b", key_b), ("G", exit_)):
        grid[y][x] = ch
    free = [c for c in room1 + room2 if c not in used]
    for x, y in rng.sample(free, coins):
        grid[y][x] = "c"
    return tuple("".join(r) for r in grid)


DISTRACTION_RADIUS = 1  # how close (in steps) a coin must be to pull the navigator off its path

SYSTEM_PLANNER = ("You plan for a grid agent. Decompose the task into the ordered subgoals it needs; answer with JSON "
                  '{"subgoals": [{"do": "<what>", "at": [x, y]}, ...]}.')
SYSTEM_NAVIGATOR = ("You move an agent '@' on a grid. Walls are '#', doors are capital letters and open only for "
                    "their key. Answer with one word: up, down, left or right.")


def describe_task(world: MilestoneWorld) -> str:
    lines = [world.render(), "", f"Task: reach the exit G at {list(world.exit)}."]
    things = [f"key {k.upper()} ('{k}') at {list(c)}" for c, k in
              zip([t for t, kind in world.targets if kind == "key"], "ab", strict=False)]
    doors = [f"door {d} at {list(c)}" for c, d in zip([t for t, kind in world.targets if kind == "door"], "AB", strict=False)]
    lines.append("You see: " + "; ".join(things + doors) + ".")
    return "\n".join(lines)


def planner_policy(messages) -> str:
    """Reads the task text and lists the milestones in order (the course's stand-in for a planning model)."""
    text = messages[-1].content
    exit_ = re.search(r"exit G at \[(\d+), (\d+)\]", text)
    if not exit_:
        return "I cannot find the task's exit in this message, so I cannot plan."
    keys = dict(re.findall(r"key (\w) \('\w'\) at (\[\d+, \d+\])", text))
    doors = dict(re.findall(r"door (\w) at (\[\d+, \d+\])", text))
    subgoals = []
    for name in sorted(keys):
        subgoals.append({"do": f"pick up key {name}", "at": json.loads(keys[name])})
        if name in doors:
            subgoals.append({"do": f"open door {name}", "at": json.loads(doors[name])})
    subgoals.append({"do": "reach the exit", "at": [int(exit_.group(1)), int(exit_.group(2))]})
    return "Here is the plan:\n```json\n" + json.dumps({"subgoals": subgoals}) + "\n```"


def observation(world: MilestoneWorld, coins=(), subgoal: dict | None = None, reminder: str | None = None) -> str:
    """What the navigator is shown each step: the map, its position, and its goal or current subgoal."""
    (x, y), stage = world.state
    lines = [world.render(coins=coins), f"You are at {[x, y]}. Milestones done: {stage}."]
    if subgoal is None:
        lines.append(f"Goal: reach the exit G at {list(world.exit)}.")
    else:
        lines.append(f"Current subgoal: {subgoal['do']} at {list(subgoal['at'])}.")
    if reminder:
        lines.append(f"Reminder: {reminder}")
    return "\n".join(lines)


def _parse_map(text: str):
    rows = [r for r in text.split("\n") if r and set(r) <= set("#.@aAbBGc")]
    return rows


def _bfs_first_move(rows, start, target, passable) -> str | None:
    queue, seen = deque([(start, None)]), {start}
    while queue:
        (x, y), first = queue.popleft()
        if (x, y) == target:
            return first
        for name in ACTIONS:
            dx, dy = MOVES[name]
            nxt = (x + dx, y + dy)
            if nxt in seen or not (0 <= nxt[1] < len(rows) and 0 <= nxt[0] < len(rows[0])):
                continue
            if nxt != target and not passable(rows[nxt[1]][nxt[0]]):
                continue
            seen.add(nxt)
            queue.append((nxt, first or name))
    return None


def navigator_policy(messages) -> str:
    """Shortest path to its target, as read from the prompt; the two built-in mistakes are in the module docstring."""
    text = messages[-1].content
    rows = _parse_map(text)
    me = re.search(r"You are at \[(\d+), (\d+)\]", text)
    if not rows or not me:
        return "I cannot see the map or my position in this message."
    pos = (int(me.group(1)), int(me.group(2)))
    sub = re.search(r"Current subgoal: (.*?) at \[(\d+), (\d+)\]", text)
    goal = re.search(r"Goal: reach the exit G at \[(\d+), (\d+)\]", text)
    if sub:
        target = (int(sub.group(2)), int(sub.group(3)))
        passable = lambda ch: ch in ".@abGc"  # doors are walls, except the one it is told to open (the target)
    elif goal:
        target = (int(goal.group(1)), int(goal.group(2)))
        passable = lambda ch: ch != "#"  # mistake 1: it does not notice that doors are locked
    else:
        return "I do not know where to go."
    if "Reminder:" not in text:  # mistake 2: a coin within DISTRACTION_RADIUS steps pulls it off its path
        coins = [(x, y) for y, r in enumerate(rows) for x, ch in enumerate(r) if ch == "c"]
        near = sorted((abs(cx - pos[0]) + abs(cy - pos[1]), (cx, cy)) for cx, cy in coins)
        if near and near[0][0] <= DISTRACTION_RADIUS:
            move = _bfs_first_move(rows, pos, near[0][1], passable)
            if move:
                return move
    return _bfs_first_move(rows, pos, target, passable) or "up"


# --- a navigator that drifts at stated rates -----------------------------------------------------------


def shortest_first_move(world: MilestoneWorld, target: tuple) -> int | None:
    """The first action of a shortest path from the agent's cell to ``target`` through what is open now."""
    start, stage = world.state
    queue, seen = deque([(start, None)]), {start}
    while queue:
        cell, first = queue.popleft()
        if cell == target:
            return first
        for action, name in enumerate(ACTIONS):
            dx, dy = MOVES[name]
            nxt = (cell[0] + dx, cell[1] + dy)
            if nxt in seen or (nxt != target and world.wall(nxt, stage)):
                continue
            seen.add(nxt)
            queue.append((nxt, action if first is None else first))
    return None


class SimulatedNavigator:
    """Walks a shortest path to its current subgoal, but loses track at stated rates.

    Each step an on-track navigator drifts with probability ``drift``; a drifting one wanders (a
    random move) until it recovers by itself (probability ``recover`` a step) or, when the prompt
    carries a reminder of its subgoal, heeds it (probability ``heed``). No layout, coin or task is
    written into it: its mistakes are random, and the rates are inputs, not measurements.
    """

    def __init__(self, rng: random.Random, *, drift: float, recover: float, heed: float) -> None:
        for name, value in (("drift", drift), ("recover", recover), ("heed", heed)):
            _require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1,
                     f"{name} must be a probability in [0, 1], got {value!r}")
        self.rng, self.drift, self.recover, self.heed = rng, drift, recover, heed
        self.on_track = True

    def act(self, world: MilestoneWorld, target: tuple, reminded: bool) -> int:
        if self.on_track:
            self.on_track = self.rng.random() >= self.drift
        else:
            self.on_track = self.rng.random() < (self.heed if reminded else self.recover)
        move = shortest_first_move(world, target) if self.on_track else None
        return self.rng.randrange(len(ACTIONS)) if move is None else move


__all__ = ["ACTIONS", "MILESTONES", "FACTS", "THREE_ROOMS", "TWO_ROOMS", "MilestoneWorld", "StepResult", "sparse_reward",
           "stage_potential", "tabular_mdp", "shaped", "train_q_learning", "greedy_rollout", "QHistory",
           "moving_average", "random_layout", "describe_task", "planner_policy", "observation", "navigator_policy",
           "SYSTEM_PLANNER", "SYSTEM_NAVIGATOR", "shortest_first_move", "SimulatedNavigator"]
