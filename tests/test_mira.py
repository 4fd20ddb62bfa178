"""The notebook-17 checks pass on correct code and fail on plausible wrong code; the world, the
shaping, the learner and the online policies behave as course.mira and the notebook say."""

from __future__ import annotations

import numpy as np
import pytest

from course import llm, mira
from course.checks import mira as check
from course.checks.core import RESULTS


def passed() -> bool:
    return RESULTS[-1].passed


# --- reference solutions (as in solutions/17_mira.ipynb) ---------------------------------------


def subgoal_progress(facts, plan):
    if not isinstance(facts, (set, frozenset)):
        raise TypeError("facts must be a set")
    done = 0
    for fact in plan:
        if fact not in facts:
            break
        done += 1
    return done


def shaped_reward(r, phi, phi_next, gamma, terminal):
    if not 0 < gamma <= 1:
        raise ValueError("gamma must be in (0, 1]")
    return r + (0.0 if terminal else gamma * phi_next) - phi


def value_iteration(P, R, gamma, *, tol=1e-12, max_iters=100_000, raise_on_budget=True, backup=np.max):
    P, R = np.asarray(P, dtype=float), np.asarray(R, dtype=float)
    if P.ndim != 3 or P.shape[0] != P.shape[2] or R.shape != P.shape[:2]:
        raise ValueError("P must be (S, A, S) and R (S, A)")
    V = np.zeros(P.shape[0])
    for sweep in range(1, max_iters + 1):
        new = backup(R + gamma * P @ V, axis=1)
        if np.abs(new - V).max() < tol:
            return new, R + gamma * P @ new, sweep
        V = new
    if raise_on_budget:
        raise RuntimeError(f"value iteration did not converge within max_iters={max_iters} sweeps")
    return V, R + gamma * P @ V, max_iters


def q_update(Q, s, a, r, s_next, terminal, alpha, gamma):
    target = r + (0.0 if terminal else gamma * Q[s_next].max())
    delta = target - Q[s, a]
    Q[s, a] += alpha * delta
    return delta


class SubgoalChecker:
    once = False
    reset_on_progress = True

    def __init__(self, n_subgoals, patience):
        for value in (n_subgoals, patience):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("positive ints")
        self.n_subgoals, self.patience = n_subgoals, patience
        self.current, self.drifting, self.alerts, self.updates, self.stalled = 0, False, [], 0, 0

    def update(self, progress):
        if isinstance(progress, bool) or not isinstance(progress, int) or not 0 <= progress <= self.n_subgoals:
            raise ValueError("progress")
        event = None
        if progress != self.current:
            event = "done" if progress == self.n_subgoals else ("advanced" if progress > self.current else "regressed")
            self.current = progress
            if self.reset_on_progress:
                self.stalled, self.drifting = 0, False
        else:
            self.stalled += 1
            hit = self.stalled == self.patience if self.once else self.stalled % self.patience == 0
            if hit:
                event, self.drifting = "drift", True
        if event is not None:
            self.alerts.append((self.updates, event))
        self.updates += 1
        return event


# --- checks: reference passes, plausible mistakes fail ------------------------------------------


def test_subgoal_progress_check_rejects_counting_facts_out_of_order():
    check.subgoal_progress(subgoal_progress)
    assert passed()
    check.subgoal_progress(lambda facts, plan: sum(f in facts for f in plan) if isinstance(facts, set)
                           else (_ for _ in ()).throw(TypeError("set")))
    assert not passed() and "prefix" in RESULTS[-1].message


def test_shaped_reward_check_rejects_a_terminal_potential_and_a_missing_discount():
    check.shaped_reward(shaped_reward)
    assert passed()

    def keeps_terminal_potential(r, phi, phi_next, gamma, terminal):
        if not 0 < gamma <= 1:
            raise ValueError("gamma")
        return r + gamma * phi_next - phi

    check.shaped_reward(keeps_terminal_potential)
    assert not passed() and "terminal" in RESULTS[-1].message

    def undiscounted(r, phi, phi_next, gamma, terminal):
        if not 0 < gamma <= 1:
            raise ValueError("gamma")
        return r + (0.0 if terminal else phi_next) - phi

    check.shaped_reward(undiscounted)
    assert not passed() and "discount" in RESULTS[-1].message


def test_value_iteration_check_rejects_a_silent_budget_and_a_mean_backup():
    check.value_iteration(value_iteration)
    assert passed()
    check.value_iteration(lambda *a, **k: value_iteration(*a, raise_on_budget=False, **k))
    assert not passed() and "RuntimeError" in RESULTS[-1].message
    check.value_iteration(lambda *a, **k: value_iteration(*a, backup=np.mean, **k))
    assert not passed()


def test_q_update_check_rejects_first_action_bootstrap_and_terminal_bootstrap():
    check.q_update(q_update)
    assert passed()

    def first_action(Q, s, a, r, s_next, terminal, alpha, gamma):
        delta = r + (0.0 if terminal else gamma * Q[s_next, 0]) - Q[s, a]
        Q[s, a] += alpha * delta
        return delta

    check.q_update(first_action)
    assert not passed() and "BEST" in RESULTS[-1].message

    def always_bootstrap(Q, s, a, r, s_next, terminal, alpha, gamma):
        delta = r + gamma * Q[s_next].max() - Q[s, a]
        Q[s, a] += alpha * delta
        return delta

    check.q_update(always_bootstrap)
    assert not passed()


def test_subgoal_checker_check_rejects_a_single_alert_and_no_reset_on_progress():
    check.subgoal_checker(SubgoalChecker)
    assert passed()
    check.subgoal_checker(type("Once", (SubgoalChecker,), {"once": True}))
    assert not passed()
    check.subgoal_checker(type("NoReset", (SubgoalChecker,), {"reset_on_progress": False}))
    assert not passed()


# --- the world, the shaping argument, the learner, the online policies -----------------------------


def test_world_needs_the_milestones_in_order_and_reports_the_step_budget():
    world = mira.MilestoneWorld(mira.TWO_ROOMS, max_steps=3)
    assert world.milestones == ["pick up key A", "open door A", "reach the exit"]
    # the door at (4, 2) is a wall at stage 0 and opens at stage 1
    assert world.transition(((3, 2), 0), mira.ACTIONS.index("right")) == (((3, 2), 0), False)
    assert world.transition(((3, 2), 1), mira.ACTIONS.index("right")) == (((4, 2), 2), False)
    assert world.transition(((6, 2), 2), mira.ACTIONS.index("right")) == (((7, 2), 2), True)
    assert world.facts(((7, 2), 2), terminal=True) == {"has key A", "door A open", "at exit"}
    world.reset()
    for _ in range(3):
        result = world.step(mira.ACTIONS.index("up"))
    assert result.truncated and "step budget spent: 3 steps, stalled at stage 0" in result.info["stopped"]


def test_world_validates_its_arguments():
    with pytest.raises(ValueError, match="max_steps"):
        mira.MilestoneWorld(mira.TWO_ROOMS, max_steps=0)
    with pytest.raises(ValueError, match="same length"):
        mira.MilestoneWorld(["#####", "#S"])
    with pytest.raises(ValueError, match="exactly one 'G'"):
        mira.MilestoneWorld(["######", "#SaA.#", "######"])
    with pytest.raises(ValueError, match="action"):
        mira.MilestoneWorld(mira.TWO_ROOMS).transition(((1, 1), 0), 4)
    with pytest.raises(ValueError, match="window"):
        mira.moving_average([1, 2], 0)
    with pytest.raises(ValueError, match="episodes"):
        mira.train_q_learning(mira.MilestoneWorld(mira.TWO_ROOMS), update=q_update, episodes=0)


def test_potential_based_shaping_keeps_the_optimal_policy_and_a_naive_bonus_does_not():
    world = mira.MilestoneWorld(mira.TWO_ROOMS, max_steps=50)
    gamma, phi = 0.95, mira.stage_potential(world)
    P, R = mira.tabular_mdp(world)
    assert np.allclose(P.sum(-1), 1.0, atol=0)  # deterministic rows: exactly one 1.0 each
    _, Q, _ = value_iteration(P, R, gamma)
    _, Qs, _ = value_iteration(*mira.tabular_mdp(world, mira.shaped(mira.sparse_reward, phi, gamma, shaped_reward)), gamma)
    Phi = np.array([phi(((x, y), st)) for st in range(world.n_stages) for y in range(world.height)
                    for x in range(world.width)] + [0.0])
    # both solves stop within tol=1e-12 of their fixed points: 1e-8 is a wide margin
    assert np.abs(Qs - (Q - Phi[:, None])).max() < 1e-8
    _, Qn, _ = value_iteration(*mira.tabular_mdp(world, lambda s, s2, t: float(t) + 0.1 * phi(s2)), gamma)
    assert mira.greedy_rollout(world, Q[:-1])[0] and not mira.greedy_rollout(world, Qn[:-1])[0]


def test_q_learning_is_seeded_and_the_subgoal_reward_learns_where_the_sparse_one_does_not():
    world = mira.MilestoneWorld(mira.THREE_ROOMS, max_steps=80)
    shaped = mira.shaped(mira.sparse_reward, mira.stage_potential(world), 0.99, shaped_reward)
    Q1, h1 = mira.train_q_learning(world, update=q_update, reward=shaped, episodes=150, seed=1)
    Q2, h2 = mira.train_q_learning(world, update=q_update, reward=shaped, episodes=150, seed=1)
    assert h1.success == h2.success and np.array_equal(Q1, Q2)
    assert mira.greedy_rollout(world, Q1)[0]
    Qs, hs = mira.train_q_learning(world, update=q_update, episodes=150, seed=1)
    assert not mira.greedy_rollout(world, Qs)[0] and sum(hs.success) <= 2
    assert all(m.startswith("step budget spent") for m, ok in zip(hs.stopped, hs.success, strict=False) if not ok)


def test_planner_lists_the_milestones_and_the_navigator_makes_its_two_mistakes():
    world = mira.MilestoneWorld(mira.random_layout(3), max_steps=80)
    reply = mira.planner_policy([llm.user(mira.describe_task(world))])
    value = llm.parse_json(reply, required={"subgoals": list}).value
    assert [s["do"] for s in value["subgoals"]] == list(mira.MILESTONES)
    assert [tuple(s["at"]) for s in value["subgoals"]] == [t for t, _ in world.targets]
    # told only the goal, it walks into locked door A and stays there
    world = mira.MilestoneWorld(mira.TWO_ROOMS, max_steps=30)
    world.reset()
    for _ in range(30):
        move = mira.navigator_policy([llm.user(mira.observation(world))])
        result = world.step(mira.ACTIONS.index(move))
    assert result.truncated and world.state == ((3, 2), 0)
    assert "cannot" in mira.planner_policy([llm.user("hello")])


def test_random_layouts_are_seeded_and_valid():
    assert mira.random_layout(5) == mira.random_layout(5) != mira.random_layout(6)
    for seed in range(10):
        world = mira.MilestoneWorld(mira.random_layout(seed))
        assert len(world.coins) == 2 and len(world.targets) == 5


def test_simulated_navigator_without_drift_reaches_the_exit_through_every_milestone():
    import random

    world = mira.MilestoneWorld(mira.THREE_ROOMS, max_steps=200)
    navigator = mira.SimulatedNavigator(random.Random(0), drift=0.0, recover=0.0, heed=0.0)
    world.reset()
    while True:
        result = world.step(navigator.act(world, world.targets[world.state[1]][0], False))
        if result.terminal or result.truncated:
            break
    assert result.terminal
    assert world.steps == 20  # THREE_ROOMS: 3 + 5 + 5 + 4 + 3 Manhattan steps from S to a, A, b, B, G (no wall in the way)


def test_simulated_navigator_rejects_rates_outside_zero_one():
    import random

    with pytest.raises(ValueError, match="drift"):
        mira.SimulatedNavigator(random.Random(0), drift=1.5, recover=0.1, heed=0.5)
