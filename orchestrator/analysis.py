"""What the data of a finished run says: its critical path, its peak concurrency, and the advice the
report gives (critical path share, idle workers, timeouts nearly hit, rate-limit waits, flaky steps,
failures that blocked others, adaptive-scaling holds).

Pure functions of the `results_summary.json` dict (SPEC §3). They never trust it to be complete: steps
that never started, kept steps of a resumed run, missing or non-numeric fields all count as unknown.
"""
from __future__ import annotations

from _collections_abc import Iterable, Mapping, Sequence   # collections.abc, without collections

from .fmt import clean, number

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BAD_RUN = ("failed", "timed_out", "cancelled")      # statuses that ran and ended badly


def steps_of(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for s in summary.get("steps") or [] if isinstance(s, Mapping) and "id" in s]


def is_kept(step: Mapping[str, Any]) -> bool:
    """Succeeded in an earlier session of a resumed run: it did not run (or take time) in this one."""
    return bool(step.get("kept_from_earlier_session"))


def interval(step: Mapping[str, Any]) -> tuple[float, float] | None:
    """[start, end] offsets of a step that ran in this session; a kept step's offsets are negative."""
    start = number(step.get("start_offset_s"))
    if start is None or is_kept(step):
        return None
    end = number(step.get("end_offset_s"))
    if end is None:
        duration = number(step.get("duration_s"))
        end = start + duration if duration is not None else start
    return start, max(start, end)


def critical_path(steps: Sequence[Mapping[str, Any]]) -> tuple[list[str], float]:
    """The chain over `depends_on` with the largest sum of real `duration_s` (unknown counts 0)."""
    ids = [str(s["id"]) for s in steps]
    known = set(ids)
    deps = {str(s["id"]): [d for d in s.get("depends_on") or [] if d in known] for s in steps}
    weight = {str(s["id"]): 0.0 if is_kept(s) else number(s.get("duration_s")) or 0.0 for s in steps}
    # Kahn's order, not recursion: a 1000-step chain must not hit the recursion limit.
    children: dict[str, list[str]] = {i: [] for i in ids}
    indegree = {i: len(deps[i]) for i in ids}
    for sid in ids:
        for dep in deps[sid]:
            children[dep].append(sid)
    ready = [i for i in ids if indegree[i] == 0]
    best: dict[str, tuple[float, str | None]] = {}
    while ready:
        sid = ready.pop()
        prior = max(((best[d][0], d) for d in deps[sid] if d in best), default=(0.0, None))
        best[sid] = (prior[0] + weight[sid], prior[1])
        for child in children[sid]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if not best:
        return [], 0.0
    position = {sid: n for n, sid in enumerate(ids)}
    end = max(best, key=lambda i: (best[i][0], -position[i]))     # ties: the earliest in the file
    path: list[str] = []
    node: str | None = end
    while node is not None:
        path.append(node)
        node = best[node][1]
    return path[::-1], best[end][0]


def max_concurrency(steps: Iterable[Mapping[str, Any]]) -> int:
    """Most steps whose [start, end) offset intervals overlap; an end at t frees before a start at t."""
    events: list[tuple[float, int]] = []
    for step in steps:
        span = interval(step)
        if span is not None:
            events += [(span[0], 1), (span[1], -1)]
    running = peak = 0
    for _, delta in sorted(events):          # -1 sorts before +1 at the same instant
        running += delta
        peak = max(peak, running)
    return peak


def id_list(ids: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _rate_limit_waits(summary: Mapping[str, Any]) -> tuple[float, list[tuple[str, float]]]:
    """(spacing, [(step, seconds waited)]) for steps started exactly one spacing after the previous
    start although they were ready earlier — the signature of a start held by the rate limiter."""
    execution = summary.get("execution") or {}
    spacing = number(execution.get("rate_limit_delay")) or 0.0
    rate = number(execution.get("rate_limit"))
    if rate and rate > 0:
        spacing = max(spacing, 1.0 / rate)
    if spacing <= 0:
        return 0.0, []
    steps = steps_of(summary)
    ends = {str(s["id"]): span[1] for s in steps if (span := interval(s)) is not None}
    started = sorted((span[0], i, s) for i, s in enumerate(steps) if (span := interval(s)))
    slack = max(0.05, 0.1 * spacing)         # dispatcher jitter after the limiter releases a start
    waits: list[tuple[str, float]] = []
    for (prev_start, _, _), (start, _, step) in zip(started, started[1:]):
        if not spacing - 1e-3 <= start - prev_start <= spacing + slack:
            continue
        ready = max((ends.get(d, 0.0) for d in step.get("depends_on") or []), default=0.0)
        waited = start - max(ready, prev_start)
        if waited > 1e-3:
            waits.append((str(step["id"]), waited))
    return spacing, waits


def _blocked_descendants(steps: Sequence[Mapping[str, Any]], root: str) -> list[str]:
    """Blocked steps downstream of `root`, whatever `blocked_by` names (direct or root cause)."""
    children: dict[str, list[str]] = {}
    for s in steps:
        for dep in s.get("depends_on") or []:
            children.setdefault(dep, []).append(str(s["id"]))
    status = {str(s["id"]): s.get("status") for s in steps}
    seen: set[str] = set()
    todo = list(children.get(root, []))
    while todo:
        sid = todo.pop()
        if sid not in seen:
            seen.add(sid)
            todo += children.get(sid, [])
    return [str(s["id"]) for s in steps if str(s["id"]) in seen and status[str(s["id"])] == "blocked"]


def recommendations(summary: Mapping[str, Any]) -> list[str]:
    """Advice that follows from the data, each item only when it applies (markdown, one line each)."""
    steps = steps_of(summary)
    totals = summary.get("summary") or {}
    execution = summary.get("execution") or {}
    wall = number(totals.get("wall_time_s")) or 0.0
    advice: list[str] = []

    for hold in summary.get("adaptive_holds") or []:
        start, end = number(hold.get("start_offset_s")), number(hold.get("end_offset_s"))
        span = f"from +{start:.1f} s to +{end:.1f} s" if start is not None and end is not None else (
            f"from +{start:.1f} s to the end" if start is not None else "")
        advice.append(f"Adaptive scaling held new starts {span}: {clean(hold.get('reason'))}.")

    path, length = critical_path(steps)
    if path and length > 0:
        text = f"Critical path: {' → '.join(f'`{i}`' for i in path)} took {length:.1f} s"
        if wall > 0:
            text += f", {min(length / wall, 1.0):.0%} of the wall time ({wall:.1f} s)"
            if length / wall >= 0.9:
                text += "; only shortening these steps makes the run faster — more workers will not"
        advice.append(text + ".")

    workers = execution.get("max_workers")
    peak = max(max_concurrency(steps), int(number(totals.get("max_concurrency")) or 0))
    # An interrupted run stopped scheduling early, so its concurrency says nothing about the pool.
    if (isinstance(workers, int) and execution.get("parallel", True) is not False
            and summary.get("status") != "interrupted" and 0 < peak < workers and len(steps) > 1):
        advice.append(f"`max_workers` is {workers} but at most {peak} step{'s' if peak > 1 else ''} "
                      f"ever ran at once: dependencies or the rate limit, not the pool, set the pace "
                      f"(`max_workers: {peak}` would have done as well).")

    for step in steps:
        duration, limit = number(step.get("duration_s")), number(step.get("timeout_s"))
        attempts = step.get("attempts")
        # duration_s runs from the first attempt's start, so after retries it is no single attempt's time
        if duration is None or not limit or is_kept(step) or (isinstance(attempts, int) and attempts > 1):
            continue
        if step.get("status") == "timed_out":
            advice.append(f"`{step['id']}` hit its timeout ({limit:g} s): raise `timeout` or split the step.")
        elif duration / limit >= 0.8:
            advice.append(f"`{step['id']}` used {duration / limit:.0%} of its timeout ({limit:g} s): "
                          f"raise `timeout` before it starts failing.")

    spacing, waits = _rate_limit_waits(summary)
    if waits:
        names = [sid for sid, _ in waits]
        advice.append(f"The rate limit (one start every {spacing:g} s) held back {id_list(names)}: they "
                      f"waited {sum(w for _, w in waits):.1f} s in total for their start.")

    for step in steps:
        attempts = step.get("attempts")
        if step.get("status") == "succeeded" and isinstance(attempts, int) and attempts > 1:
            advice.append(f"`{step['id']}` succeeded only on attempt {attempts}: it may be flaky.")

    blockers = [(s, _blocked_descendants(steps, str(s["id"]))) for s in steps if s.get("status") in BAD_RUN]
    for step, blocked in sorted(blockers, key=lambda item: -len(item[1])):
        if blocked:
            advice.append(f"`{step['id']}` {str(step.get('status')).replace('_', ' ')} and blocked "
                          f"{len(blocked)} other step{'s' if len(blocked) > 1 else ''} "
                          f"({id_list(blocked)}): fix it first.")
    return advice
