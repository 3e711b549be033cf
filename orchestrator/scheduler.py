"""The pure scheduling core: which steps may start now, and what a finished attempt changes.

The dispatcher drives it like `graphlib.TopologicalSorter`: `take_ready(now)` hands out the steps that
may start (and marks them running), `finish(step, status, now)` records an attempt's end, and `done`
says when nothing is left to start or wait for. It holds no processes, files or clock: `now` is passed
in, so the same object runs a real run, a dry-run simulation and the unit tests.

State, per step: `status` (a `StepStatus`), `attempts`, `not_before` (retry delay), `blocked_by`,
`reason` (why it was skipped or blocked). Shared: `unmet` (dependencies not yet succeeded), the ready
heap, running counts per group, the token bucket, consecutive failures per tool, and `stopping`.

Selection policy, among steps whose dependencies have all succeeded: higher `priority` first, then the
longer remaining path to the end of the graph (by duration estimates or history), then file order.
A step starts only while a slot is free (`max_workers`), its group has room (`max_workers`, or one at
a time and in listed order for `sequential` groups), no step it conflicts with is running
(`--on-conflict serialize`), its retry delay has passed and the rate limiter has a token.

Failure policies: `continue` blocks the failed step's dependents; `fail_all` also cancels every running
step and skips everything not started; `complete_running` skips everything not started and lets running
steps finish. A step group's own `on_failure` applies the same within the group. A circuit breaker skips
the remaining steps of a tool after N consecutive failed steps of it. `stop()` is the run timeout
(pending steps skipped) or an interrupt (pending steps stay pending).
"""
from __future__ import annotations

from _heapq import heapify, heappop, heappush
from itertools import repeat
from _operator import neg

from .frozen import record
from .history import expected
from .model import OnFailure, StepStatus, Workstream
from .ratelimit import TokenBucket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Mapping, Sequence
    import random

_FAILED = (StepStatus.FAILED, StepStatus.TIMED_OUT)


class StepState:
    """One step's scheduling state (one per step, read in every hot loop: slots, a plain __init__)."""

    __slots__ = ("status", "attempts", "earlier_attempts", "not_before", "blocked_by", "reason")

    def __init__(self) -> None:
        self.status = StepStatus.PENDING
        self.attempts = 0                # attempts in this session (the retry budget)
        self.earlier_attempts = 0        # attempts in earlier sessions of a resumed run
        self.not_before = 0.0
        self.blocked_by: list[str] = []
        self.reason: str | None = None

    def __repr__(self) -> str:
        return (f"StepState(status={self.status!r}, attempts={self.attempts}, "
                f"blocked_by={self.blocked_by!r}, reason={self.reason!r})")


@record
class Change:
    """A status change the caller should record (log, state) — besides the ones it asked for."""

    step_id: str
    status: StepStatus
    reason: str | None = None


class Outcome:
    """What `finish` decided: retry or not, and what else changed because of it."""

    __slots__ = ("retry_at", "changes", "cancel")

    def __init__(self) -> None:
        self.retry_at: float | None = None
        self.changes: list[Change] = []
        self.cancel: list[str] = []      # running steps the caller must cancel

    def __repr__(self) -> str:
        return f"Outcome(retry_at={self.retry_at!r}, changes={self.changes!r}, cancel={self.cancel!r})"

    @property
    def plain(self) -> bool:
        """The usual end: no retry, and no other step blocked, skipped or to cancel."""
        return self.retry_at is None and not self.changes and not self.cancel


def _slots(ws: Workstream, max_workers: int | None) -> int:
    return max(1, max_workers if max_workers is not None else ws.execution.effective_workers)


def _keys(ws: Workstream, rank: list[float]) -> list[tuple[int, float, int]]:
    """Each step's place in the ready heap, by file position: higher `priority` first, then the
    higher rank (the remaining path), then file order. Unique, so the pop order is the same
    whichever way the heap is built."""
    return list(zip(map(neg, [s.priority for s in ws.steps]), map(neg, rank), range(len(rank))))


class Scheduler:
    def __init__(self, ws: Workstream, *, max_workers: int | None = None,
                 on_failure: OnFailure | None = None,
                 priorities: Mapping[str, float] | None = None,
                 serialize: Iterable[tuple[str, str]] = (),
                 keep: Iterable[str] = (),
                 earlier_attempts: Mapping[str, int] | None = None,
                 min_start_interval: float | None = None,
                 rng: random.Random | None = None):
        ex = ws.execution
        self.ws = ws
        self.max_workers = _slots(ws, max_workers)
        self.on_failure = on_failure or ex.on_failure
        self.circuit_threshold = ex.circuit_breaker_threshold
        interval = ex.min_start_interval if min_start_interval is None else min_start_interval
        self.bucket = TokenBucket(interval)
        self._rng = rng                 # the retry jitter's; made on the first retry (`random` is
                                        # 2 ms of start-up that most runs never use)
        # the hot structures are lists by file position (a step's index), with ids only at the
        # edges: with 100 000 steps, string-keyed lookups miss the caches at every step, and every
        # pass over the Step objects costs more than the work done with what it reads
        ids = self._ids = ws.step_ids
        links = ws.links
        pos = self._pos = links.pos
        dependents = self._dependents = links.dependents     # shared with the path passes: read only
        states = self._states = [StepState() for _ in ids]
        self.state: dict[str, StepState] = dict(zip(ids, states))
        prio = priorities or {}
        self._keys = _keys(ws, list(map(prio.get, ids, repeat(0.0))))
        self.group_of: dict[str, str] = {}
        self.group_cap: dict[str, int] = {}
        self.group_policy: dict[str, OnFailure | None] = {}
        self.prev_in_group: dict[str, str] = {}
        for g in ws.step_groups:
            cap = 1 if g.execute == "sequential" else (g.max_workers or self.max_workers)
            self.group_cap[g.id] = cap
            self.group_policy[g.id] = g.on_failure
            for i, sid in enumerate(g.steps):
                self.group_of[sid] = g.id
                if g.execute == "sequential" and i > 0:
                    self.prev_in_group[sid] = g.steps[i - 1]
        self.group_running = {g: 0 for g in self.group_cap}
        self.conflicts: dict[str, set[str]] = {}
        for a, b in serialize:
            self.conflicts.setdefault(a, set()).add(b)
            self.conflicts.setdefault(b, set()).add(a)
        self.running: set[str] = set()
        self.stopping: str | None = None
        self.interrupted = False
        self.tool_failures: dict[str, int] = {}
        self.max_concurrency = 0
        self.grown: set[str] = set()      # blocked steps whose blocked_by grew (take_grown)
        self._earliest_retry: float | None = None  # the last take_ready saw a retry delay end here
        self._token_blocked = False       # the last take_ready stopped for the rate limiter
        unmet = self._unmet = list(map(len, links.deps))
        kept = set(keep) & self.state.keys()
        self.pending_or_running = len(self.state) - len(kept)
        for sid, n in (earlier_attempts or {}).items():
            if sid in self.state:
                self.state[sid].earlier_attempts = n
        for sid in kept:  # resumed runs: earlier successes count as done
            self.state[sid].status = StepStatus.SUCCEEDED
            for j in dependents[pos[sid]]:
                unmet[j] -= 1
        # keys are unique (they end with the file position), so the pop order is the same
        # whichever way the heap is built
        keys = self._keys
        kept_at = {pos[sid] for sid in kept}
        ready = [(keys[i], i) for i, n in enumerate(unmet) if n == 0 and i not in kept_at]
        heapify(ready)
        self._heap: list[tuple[tuple, int]] = ready
        # most workstreams have no groups, no serialized pairs and no rate limit: the hot loops
        # then skip those checks (a 100 000-step dry-run simulates every start and end)
        self._constrained = bool(self.group_of or self.conflicts)
        self._limited = self.bucket.interval > 0

    def _jitter_rng(self) -> random.Random:
        if self._rng is None:
            import random
            self._rng = random.Random(0)
        return self._rng

    # --- queries -----------------------------------------------------------------------------------
    def status(self, step_id: str) -> StepStatus:
        return self.state[step_id].status

    def take_grown(self) -> set[str]:
        """The blocked steps whose `blocked_by` grew (another dependency failed after they were
        blocked) since the last call."""
        grown, self.grown = self.grown, set()
        return grown

    def attempt(self, step_id: str) -> int:
        """The number of the current (or last) attempt, counting earlier sessions of the run."""
        st = self.state[step_id]
        return st.earlier_attempts + st.attempts

    def unlocked_by(self, step_id: str, limit: int) -> list[str]:
        """Up to `limit` pending steps whose last unmet dependency is `step_id`: what its success
        would make ready (a caller may get them ready to start while it runs)."""
        unmet, states, ids, pending = self._unmet, self._states, self._ids, StepStatus.PENDING
        out: list[str] = []
        for j in self._dependents[self._pos[step_id]]:
            if unmet[j] == 1 and states[j].status is pending:
                out.append(ids[j])
                if len(out) >= limit:
                    break
        return out

    @property
    def done(self) -> bool:
        """Nothing running and nothing that could still start."""
        if self.running:
            return False
        return bool(self.stopping) or self.pending_or_running == 0

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time at which `take_ready` may hand out something because time passed."""
        if self.stopping or len(self.running) >= self.max_workers or not self._heap:
            return None
        if not self._token_blocked and self._earliest_retry is None:
            return None                   # the common case: only a finishing step changes anything
        times = []
        if self._token_blocked:
            # the last take_ready stopped for the rate limiter: wake when (or since) its token is
            # there, even if it came between that call and this one
            times.append(now + self.bucket.wait_time(now))
        if self._earliest_retry is not None:
            times.append(max(now, self._earliest_retry))
        return min(times) if times else None

    # --- handing out work --------------------------------------------------------------------------
    def _may_start(self, sid: str, now: float) -> bool:
        st = self.state[sid]
        if st.not_before > now:
            if self._earliest_retry is None or st.not_before < self._earliest_retry:
                self._earliest_retry = st.not_before
            return False
        g = self.group_of.get(sid)
        if g is not None and self.group_running[g] >= self.group_cap[g]:
            return False
        prev = self.prev_in_group.get(sid)
        if prev is not None and not self.state[prev].status.terminal:
            return False
        others = self.conflicts.get(sid)
        return not (others and others & self.running)

    def take_ready(self, now: float, limit: int | None = None) -> list[str]:
        """Steps to start now, best first; each is marked running and its attempt counted.

        `limit` caps how many may be running afterwards (below max_workers), e.g. while the
        machine is overloaded.
        """
        out: list[str] = []
        if self.stopping:
            return out
        cap = self.max_workers if limit is None else max(0, min(limit, self.max_workers))
        self._token_blocked = False
        self._earliest_retry = None
        aside: list[tuple[tuple, int]] = []
        heap, states, ids, running = self._heap, self._states, self._ids, self.running
        constrained, limited, pending = self._constrained, self._limited, StepStatus.PENDING
        while heap and len(running) < cap:
            item = heappop(heap)
            st = states[item[1]]
            if st.status is not pending:
                continue  # blocked or skipped while it waited
            sid = ids[item[1]]
            if (constrained or st.not_before > now) and not self._may_start(sid, now):
                aside.append(item)
                continue
            if limited and not self.bucket.take(now):
                aside.append(item)
                self._token_blocked = True
                break
            st.status = StepStatus.RUNNING   # started: marked running, its attempt counted
            st.attempts += 1
            running.add(sid)
            if constrained:
                g = self.group_of.get(sid)
                if g is not None:
                    self.group_running[g] += 1
            out.append(sid)
        if len(running) > self.max_concurrency:
            self.max_concurrency = len(running)
        for item in aside:
            heappush(heap, item)
        return out

    # --- recording results -------------------------------------------------------------------------
    def finish(self, sid: str, status: StepStatus, now: float, *, retry_delay: float | None = None,
               error: str | None = None) -> Outcome:
        """Record the end of the running attempt of `sid` with `status`.

        A failed or timed-out attempt with retries left goes back to pending and waits
        `retry_delay * 2**(attempt-1)` seconds, with up to 10% jitter so retries of many steps do
        not start in lockstep.
        """
        st = self.state[sid]
        if sid not in self.running:
            raise ValueError(f"step {sid} is not running")
        self.running.discard(sid)
        if self.group_of:
            g = self.group_of.get(sid)
            if g is not None:
                self.group_running[g] -= 1
        out = Outcome()
        if status is StepStatus.SUCCEEDED:   # the common case first: no retry, no policy
            st.status = status
            st.reason = error
            self.pending_or_running -= 1
            if self.circuit_threshold:
                self.tool_failures[self.ws.step(sid).tool] = 0
            unmet, heap, keys, states = self._unmet, self._heap, self._keys, self._states
            for j in self._dependents[self._pos[sid]]:
                left = unmet[j] = unmet[j] - 1
                if left == 0 and states[j].status is StepStatus.PENDING:
                    heappush(heap, (keys[j], j))
            return out
        step = self.ws.step(sid)
        if status in _FAILED and st.attempts <= step.retries and not self.stopping:
            base = step.retry_delay if retry_delay is None else retry_delay
            delay = base * (2 ** (st.attempts - 1)) * (1.0 + 0.1 * self._jitter_rng().random())
            st.status = StepStatus.PENDING
            st.not_before = now + delay
            i = self._pos[sid]
            heappush(self._heap, (self._keys[i], i))
            out.retry_at = st.not_before
            return out
        st.status = status
        st.reason = error
        self.pending_or_running -= 1
        if status is StepStatus.CANCELLED and self.interrupted:
            return out  # an interrupted run leaves dependents pending, to be resumed
        out.changes.extend(self._block_dependents(sid))
        if status in _FAILED:
            self._apply_policy(sid, out)
            self._count_tool_failure(step.tool, out)
        return out

    def _block_dependents(self, sid: str) -> list[Change]:
        """Every pending step that (transitively) depends on `sid` becomes blocked."""
        changes: list[Change] = []
        stack = [sid]
        ids, pos, states = self._ids, self._pos, self._states
        while stack:
            cur = stack.pop()
            for j in self._dependents[pos[cur]]:
                dep, st = ids[j], states[j]
                if st.status is not StepStatus.PENDING:
                    if st.status is StepStatus.BLOCKED and cur not in st.blocked_by:
                        st.blocked_by.append(cur)
                        self.grown.add(dep)
                    continue
                st.status = StepStatus.BLOCKED
                self.pending_or_running -= 1
                st.blocked_by = [cur]
                word = "was blocked" if self.state[cur].status is StepStatus.BLOCKED else (
                    f"ended {self.state[cur].status.value}")
                st.reason = f"dependency {cur} {word}"
                changes.append(Change(dep, StepStatus.BLOCKED, st.reason))
                stack.append(dep)
        return changes

    def _skip(self, sids: Iterable[str], reason: str) -> list[Change]:
        changes = []
        for sid in sids:
            st = self.state[sid]
            if st.status is StepStatus.PENDING:
                st.status = StepStatus.SKIPPED
                self.pending_or_running -= 1
                st.reason = reason
                changes.append(Change(sid, StepStatus.SKIPPED, reason))
        return changes

    def _apply_policy(self, sid: str, out: Outcome) -> None:
        g = self.group_of.get(sid)
        group_policy = self.group_policy.get(g) if g else None
        if group_policy in (OnFailure.FAIL_ALL, OnFailure.COMPLETE_RUNNING):
            members = [s for s in self.ws.step_groups if s.id == g][0].steps
            reason = f"not started: step group {g} has on_failure={group_policy.value} and {sid} failed"
            out.changes.extend(self._skip(members, reason))
            if group_policy is OnFailure.FAIL_ALL:
                out.cancel.extend(s for s in members if s in self.running)
        if self.on_failure is OnFailure.CONTINUE:
            return
        reason = f"not started: on_failure={self.on_failure.value} after {sid} failed"
        self.stopping = reason
        out.changes.extend(self._skip(list(self.state), reason))
        if self.on_failure is OnFailure.FAIL_ALL:
            out.cancel.extend(s for s in self.running if s not in out.cancel)

    def _count_tool_failure(self, tool: str, out: Outcome) -> None:
        n = self.tool_failures.get(tool, 0) + 1
        self.tool_failures[tool] = n
        if not self.circuit_threshold or n < self.circuit_threshold:
            return
        reason = f"circuit open for tool {tool} ({n} consecutive failed steps)"
        skipped = self._skip([s.id for s in self.ws.steps if s.tool == tool], reason)
        out.changes.extend(skipped)
        for ch in skipped:
            out.changes.extend(self._block_dependents(ch.step_id))

    def stop(self, reason: str, *, interrupted: bool = False) -> Outcome:
        """Start nothing more. Run timeout: pending steps are skipped. Interrupt: they stay pending."""
        out = Outcome()
        if self.stopping is None or interrupted:
            self.stopping = reason
        self.interrupted = self.interrupted or interrupted
        if not interrupted:
            out.changes.extend(self._skip(list(self.state), f"not started: {reason}"))
        out.cancel.extend(sorted(self.running))
        return out

    # --- for records -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in StepStatus}
        for st in self.state.values():
            counts[st.status.value] += 1
        return counts


def simulate(ws: Workstream, *, max_workers: int | None = None,
             priorities: Mapping[str, float] | None = None,
             durations: Mapping[str, float] | None = None,
             serialize: Iterable[tuple[str, str]] = ()) -> list[tuple[str, float, float]]:
    """Run the scheduler on a fake clock where every step succeeds after its estimated duration
    (`durations`, else `estimated_duration`, else 1 s).

    Returns `(step_id, start, end)` in start order: the plan `--dry-run` prints.
    """
    ids = ws.step_ids
    known = durations or {}
    took = [t if d is None else d for t, d in zip(expected(ws, None), map(known.get, ids))]
    prio = priorities or {}
    order, starts, ends = timeline(ws, max_workers=max_workers, took=took,
                                   rank=list(map(prio.get, ids, repeat(0.0))), serialize=serialize)
    return [(ids[i], start, end) for i, start, end in zip(order, starts, ends)]


def timeline(ws: Workstream, *, took: Sequence[float], rank: Sequence[float],
             max_workers: int | None = None, serialize: Iterable[tuple[str, str]] = ()
             ) -> tuple[list[int], list[float], list[float]]:
    """`simulate` in columns, by file position: `took` is each step's duration and `rank` its
    priority after `priority` (the remaining path); returns the steps in start order, and their
    starts and ends."""
    serialize = list(serialize)
    if serialize or any(g.steps for g in ws.step_groups) or ws.execution.min_start_interval > 0:
        sched = Scheduler(ws, max_workers=max_workers, serialize=serialize,
                          priorities=dict(zip(ws.step_ids, rank)))
        return _general_timeline(sched, took)
    return _plain_timeline(ws, _slots(ws, max_workers), _keys(ws, list(rank)), took)


def _plain_timeline(ws: Workstream, cap: int, keys: list[tuple[int, float, int]],
                    took: Sequence[float]) -> tuple[list[int], list[float], list[float]]:
    """The simulation for a workstream without groups, serialized pairs or a rate limit (nearly
    all): what `take_ready` and `finish` do when every step succeeds, on the scheduler's keys,
    dependents and unmet counts but without a `Scheduler` and its per-call work (a 100 000-step
    dry-run simulates every start and end). `_general_timeline` gives the same answer
    (tests/unit/test_scheduler.py compares them)."""
    links = ws.links
    dependents, unmet = links.dependents, list(map(len, links.deps))
    heap = [keys[i] for i, n in enumerate(unmet) if n == 0]   # a key ends with its position
    heapify(heap)
    order: list[int] = []
    starts: list[float] = []
    ends: list[float] = []
    events: list[tuple[float, int]] = []   # (end, start number): ties end in start order
    now, running = 0.0, 0
    while True:
        # as take_ready: start the best ready steps while a slot is free
        while heap and running < cap:
            i = heappop(heap)[2]
            end = now + took[i]
            heappush(events, (end, len(order)))
            order.append(i)
            starts.append(now)
            ends.append(end)
            running += 1
        if not events:
            break
        # as finish: one step ends (the next loop may start steps before the next end, even at
        # the same time, exactly as the dispatcher's loop does)
        now, k = heappop(events)
        running -= 1
        for j in dependents[order[k]]:
            left = unmet[j] = unmet[j] - 1
            if left == 0:
                heappush(heap, keys[j])
    return order, starts, ends


def _general_timeline(sched: Scheduler, took: Sequence[float]
                      ) -> tuple[list[int], list[float], list[float]]:
    """The simulation through `take_ready`, `finish` and `next_wakeup`, for every workstream."""
    take_ready, finish, next_wakeup = sched.take_ready, sched.finish, sched.next_wakeup
    pos = sched._pos
    now = 0.0
    events: list[tuple[float, int, str]] = []
    order: list[int] = []
    starts: list[float] = []
    ends: list[float] = []
    heap, running, cap = sched._heap, sched.running, sched.max_workers
    succeeded = StepStatus.SUCCEEDED
    while running or sched.pending_or_running:   # `done`, for a run that is never stopped
        # take_ready hands out nothing without a free slot and a ready step: no call then
        for sid in (take_ready(now) if heap and len(running) < cap else ()):
            i = pos[sid]
            end = now + took[i]
            heappush(events, (end, len(order), sid))
            order.append(i)
            starts.append(now)
            ends.append(end)
        wake = next_wakeup(now) if sched._token_blocked or sched._earliest_retry is not None else None
        if events and (wake is None or events[0][0] <= wake):
            now, _, sid = heappop(events)
            finish(sid, succeeded, now)
        elif wake is not None:
            now = wake
        elif not events:
            break  # nothing can ever start (cannot happen for a validated workstream)
    return order, starts, ends
