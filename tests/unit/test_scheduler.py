"""The pure scheduling core on data: no processes, no clock, no files."""
from __future__ import annotations

import pytest

from orchestrator.model import Execution, OnFailure, Step, StepGroup, StepStatus, Workstream
from orchestrator.ratelimit import TokenBucket
from orchestrator.scheduler import Scheduler, simulate

pytestmark = pytest.mark.timeout(30)
S = StepStatus


def ws_of(*specs, groups=(), **execution):
    steps = []
    for i, spec in enumerate(specs):
        sid, deps, *rest = spec
        extra = rest[0] if rest else {}
        steps.append(Step(sid, i, tasks=("true",), depends_on=tuple(deps), **extra))
    return Workstream("ws", tuple(steps), Execution(**execution), step_groups=tuple(groups))


def test_ready_steps_start_as_soon_as_their_own_dependencies_succeed():
    # a -> c, b (long) : c must start when a ends, without waiting for b's "level"
    ws = ws_of(("a", []), ("b", []), ("c", ["a"]), max_workers=4)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a", "b"]
    s.finish("a", S.SUCCEEDED, 1)
    assert s.take_ready(1) == ["c"]
    assert s.status("b") is S.RUNNING


def test_max_workers_is_never_exceeded_and_file_order_breaks_ties():
    ws = ws_of(*[(f"s{i}", []) for i in range(5)], max_workers=2)
    s = Scheduler(ws, priorities={})
    assert s.take_ready(0) == ["s0", "s1"]
    assert s.take_ready(0) == []
    s.finish("s1", S.SUCCEEDED, 1)
    assert s.take_ready(1) == ["s2"]
    assert s.max_concurrency == 2


def test_priority_then_remaining_path_then_file_order():
    ws = ws_of(("x", []), ("y", [], {"priority": 5}), ("z", []), max_workers=1)
    s = Scheduler(ws, priorities={"x": 1.0, "z": 9.0})
    order = []
    for t in range(3):
        (sid,) = s.take_ready(t)
        order.append(sid)
        s.finish(sid, S.SUCCEEDED, t + 0.5)
    assert order == ["y", "z", "x"]


def test_a_blocked_step_whose_blocked_by_grows_is_reported_once():
    ws = ws_of(("a", []), ("b", []), ("c", ["a", "b"]), ("d", ["c"]), max_workers=4)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a", "b"]
    out = s.finish("a", S.FAILED, 1)
    assert {c.step_id for c in out.changes} == {"c", "d"}    # blocked now: told as changes
    assert s.take_grown() == set()
    out = s.finish("b", S.FAILED, 2)
    assert out.changes == []
    assert s.state["c"].blocked_by == ["a", "b"] and s.state["d"].blocked_by == ["c"]
    assert s.take_grown() == {"c"}
    assert s.take_grown() == set()


def test_parallel_false_runs_one_at_a_time():
    ws = ws_of(("a", []), ("b", []), parallel=False, max_workers=4)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a"]


def test_continue_blocks_dependents_transitively_and_runs_the_rest():
    ws = ws_of(("a", []), ("b", ["a"]), ("c", ["b"]), ("d", []), max_workers=4)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a", "d"]
    out = s.finish("a", S.FAILED, 1)
    assert {c.step_id: c.status for c in out.changes} == {"b": S.BLOCKED, "c": S.BLOCKED}
    assert s.state["b"].blocked_by == ["a"] and s.state["c"].blocked_by == ["b"]
    assert not out.cancel
    s.finish("d", S.SUCCEEDED, 2)
    assert s.done and s.counts()["blocked"] == 2


def test_fail_all_cancels_running_and_skips_the_rest():
    ws = ws_of(("a", []), ("b", []), ("c", []), ("d", ["a"]), max_workers=2, on_failure=OnFailure.FAIL_ALL)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a", "b"]
    out = s.finish("a", S.FAILED, 1)
    assert out.cancel == ["b"]
    assert s.status("c") is S.SKIPPED and s.status("d") is S.BLOCKED
    assert s.take_ready(1) == []
    assert not s.done
    s.finish("b", S.CANCELLED, 2)
    assert s.done


def test_complete_running_lets_running_finish_and_starts_nothing():
    ws = ws_of(("a", []), ("b", []), ("c", []), max_workers=2, on_failure=OnFailure.COMPLETE_RUNNING)
    s = Scheduler(ws)
    s.take_ready(0)
    out = s.finish("a", S.TIMED_OUT, 1)
    assert out.cancel == [] and s.status("c") is S.SKIPPED
    s.finish("b", S.SUCCEEDED, 2)
    assert s.done and s.status("b") is S.SUCCEEDED


def test_retries_wait_with_doubling_delay_then_succeed():
    ws = ws_of(("a", [], {"retries": 2, "retry_delay": 1.0}), max_workers=1)
    s = Scheduler(ws)
    s.take_ready(0)
    out = s.finish("a", S.FAILED, 10)
    assert 11.0 <= out.retry_at <= 11.1
    assert s.take_ready(10.5) == [] and s.next_wakeup(10.5) == pytest.approx(out.retry_at)
    assert s.take_ready(out.retry_at) == ["a"]
    out2 = s.finish("a", S.FAILED, 20)
    assert 22.0 <= out2.retry_at <= 22.2  # doubled
    s.take_ready(out2.retry_at)
    s.finish("a", S.SUCCEEDED, 30)
    assert s.state["a"].attempts == 3 and s.done


def test_rate_limit_spaces_starts():
    ws = ws_of(("a", []), ("b", []), ("c", []), max_workers=3, rate_limit_delay=0.5)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a"]
    assert s.take_ready(0.2) == []
    assert s.next_wakeup(0.2) == pytest.approx(0.5)
    assert s.take_ready(0.5) == ["b"]
    assert s.take_ready(1.0) == ["c"]


def test_rate_limit_as_rate_and_the_stricter_holds():
    assert Execution(rate_limit_delay=0.1, rate_limit=2).min_start_interval == 0.5
    assert Execution(rate_limit_delay=1.0, rate_limit=2).min_start_interval == 1.0


def test_token_bucket_does_not_bank_a_burst():
    b = TokenBucket(1.0)
    assert b.take(0) and not b.take(0.5)
    assert b.take(100) and not b.take(100.1)


def test_group_max_workers_and_sequential_order():
    groups = [StepGroup("g", ("a", "b", "c"), max_workers=2), StepGroup("q", ("x", "y"), execute="sequential")]
    ws = ws_of(("a", []), ("b", []), ("c", []), ("y", []), ("x", []), groups=groups, max_workers=8)
    s = Scheduler(ws)
    started = s.take_ready(0)
    assert set(started) == {"a", "b", "x"}  # g capped at 2; q in listed order: x before y
    s.finish("x", S.FAILED, 1)               # a failed sequential member does not block the next
    assert s.take_ready(1) == ["y"]


def test_group_fail_all_stays_inside_the_group():
    groups = [StepGroup("g", ("a", "b", "c"), max_workers=2, on_failure=OnFailure.FAIL_ALL)]
    ws = ws_of(("a", []), ("b", []), ("c", []), ("z", []), groups=groups, max_workers=3)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a", "b", "z"]
    out = s.finish("a", S.FAILED, 1)
    assert out.cancel == ["b"] and s.status("c") is S.SKIPPED and not s.stopping


def test_serialized_conflicts_never_run_together():
    ws = ws_of(("a", []), ("b", []), ("c", []), max_workers=3)
    s = Scheduler(ws, serialize=[("a", "b")])
    assert s.take_ready(0) == ["a", "c"]
    s.finish("a", S.SUCCEEDED, 1)
    assert s.take_ready(1) == ["b"]


def test_circuit_breaker_skips_remaining_steps_of_the_tool():
    ws = Workstream("ws", tuple(Step(f"s{i}", i, tool="api", tasks=("x",)) for i in range(5)),
                    Execution(max_workers=1, circuit_breaker_threshold=2))
    s = Scheduler(ws)
    for t in range(2):
        (sid,) = s.take_ready(t)
        out = s.finish(sid, S.FAILED, t + 0.5)
    assert [c.step_id for c in out.changes] == ["s2", "s3", "s4"]
    assert "circuit open for tool api" in out.changes[0].reason


def test_stop_for_run_timeout_skips_and_interrupt_leaves_pending():
    ws = ws_of(("a", []), ("b", []), max_workers=1)
    s = Scheduler(ws)
    s.take_ready(0)
    out = s.stop("run timeout of 5s reached")
    assert out.cancel == ["a"] and s.status("b") is S.SKIPPED
    s2 = Scheduler(ws)
    s2.take_ready(0)
    out2 = s2.stop("interrupted", interrupted=True)
    assert out2.cancel == ["a"] and s2.status("b") is S.PENDING
    s2.finish("a", S.CANCELLED, 1)
    assert s2.done and s2.status("b") is S.PENDING


def test_resume_keeps_succeeded_steps():
    ws = ws_of(("a", []), ("b", ["a"]), max_workers=2)
    s = Scheduler(ws, keep=["a"])
    assert s.take_ready(0) == ["b"]


def test_simulate_prefers_the_critical_path():
    # long chain declared last: a longest-path-first scheduler starts it first
    ws = ws_of(("s1", [], {"estimated_duration": 1}), ("s2", [], {"estimated_duration": 1}),
               ("l1", [], {"estimated_duration": 3}), ("l2", ["l1"], {"estimated_duration": 3}),
               max_workers=2)
    from orchestrator.graph import remaining_path
    deps = {s.id: list(s.depends_on) for s in ws.steps}
    prio = remaining_path(deps, ws.step_ids, {s.id: s.estimated_duration for s in ws.steps})
    plan = simulate(ws, priorities=prio)
    assert plan[0][0] == "l1"
    assert max(end for *_, end in plan) == 6


@pytest.mark.parametrize("seed", range(40))
def test_the_plain_simulation_is_the_scheduler_driven_one(seed):
    # the dry-run's fast loop (_plain_timeline) must hand out exactly what take_ready/finish do:
    # random DAGs with ties in durations and priorities, several worker counts
    import random
    from orchestrator.graph import remaining_path
    from orchestrator.scheduler import _general_timeline, _plain_timeline
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    specs = []
    for i in range(n):
        deps = rng.sample([f"s{j}" for j in range(i)], min(i, rng.randint(0, 3)))
        extra = {"estimated_duration": rng.choice([0.5, 1.0, 1.0, 2.0, 0.25 * rng.randint(1, 8)])}
        if rng.random() < 0.2:
            extra["priority"] = rng.randint(-1, 2)
        specs.append((f"s{i}", deps, extra))
    ws = ws_of(*specs, max_workers=rng.randint(1, 5))
    deps = {s.id: list(s.depends_on) for s in ws.steps}
    prio = remaining_path(deps, ws.step_ids, {s.id: s.estimated_duration for s in ws.steps}) \
        if seed % 2 else {}
    took = [s.estimated_duration for s in ws.steps]
    sched = Scheduler(ws, priorities=prio)
    plain = _plain_timeline(ws, sched.max_workers, sched._keys, took)
    general = _general_timeline(sched, took)
    assert plain == general
    assert sorted(plain[0]) == list(range(n))          # every step starts once


def test_a_constrained_workstream_is_simulated_through_the_scheduler():
    # a sequential group: the plain loop does not know groups, the general one must be used
    ws = ws_of(("a", []), ("b", []), ("c", []), max_workers=3,
               groups=[StepGroup("g", ("a", "b"), execute="sequential")])
    plan = simulate(ws)
    assert [(sid, start) for sid, start, _ in plan] == [("a", 0.0), ("c", 0.0), ("b", 1.0)]


def test_take_ready_limit_caps_running_steps():
    ws = ws_of(("a", []), ("b", []), ("c", []), max_workers=3)
    s = Scheduler(ws)
    assert s.take_ready(0, limit=1) == ["a"]
    assert s.take_ready(0, limit=1) == []
    assert s.take_ready(0) == ["b", "c"]


def test_a_token_that_arrives_between_take_ready_and_next_wakeup_still_wakes_the_loop():
    # the dispatcher calls take_ready(t1), then next_wakeup(t2) with t2 > t1: if the token became
    # available in between, "no timer" would leave a loop with nothing running asleep for ever
    ws = ws_of(("a", []), ("b", []), max_workers=2, rate_limit_delay=0.2)
    s = Scheduler(ws)
    assert s.take_ready(0.0) == ["a"]
    assert s.take_ready(0.1) == []            # b waits for the token
    s.finish("a", S.SUCCEEDED, 0.15)
    wake = s.next_wakeup(0.25)                 # the token came at 0.2
    assert wake is not None and wake <= 0.25
    assert s.take_ready(wake) == ["b"]
    assert s.next_wakeup(0.3) is None          # nothing left that time alone could start


def test_a_retry_delay_that_ends_between_take_ready_and_next_wakeup_still_wakes_the_loop():
    ws = ws_of(("a", [], {"retries": 1, "retry_delay": 0.1}), max_workers=1)
    s = Scheduler(ws, rng=__import__("random").Random(1))
    s.take_ready(0.0)
    out = s.finish("a", S.FAILED, 1.0)
    assert s.take_ready(1.0) == []             # still waiting for its retry delay
    late = out.retry_at + 0.5                   # the delay ended before the loop asked
    assert s.next_wakeup(late) == late
    assert s.take_ready(late) == ["a"]


def test_unlocked_by_names_the_pending_steps_a_running_step_is_the_last_dependency_of():
    ws = ws_of(("a", []), ("b", []), ("c", ["a"]), ("d", ["a", "b"]), ("e", ["a"]), ("f", ["a"]),
               max_workers=4)
    s = Scheduler(ws)
    assert s.take_ready(0) == ["a", "b"]
    assert s.unlocked_by("a", limit=10) == ["c", "e", "f"]      # d waits for b as well
    assert s.unlocked_by("a", limit=2) == ["c", "e"]
    s.finish("b", S.SUCCEEDED, 1)
    assert s.unlocked_by("a", limit=10) == ["c", "d", "e", "f"]
    s.finish("a", S.FAILED, 2)                                  # blocked: nothing to get ready
    assert s.unlocked_by("a", limit=10) == []
