"""Step durations remembered across runs, for scheduling priorities (as ninja uses .ninja_log).

`.worktrees/<ws-id>/history.json` maps each step to a smoothed duration of its successful runs and the
definition hash it had. The next run ranks ready steps by their remaining critical path computed from
these durations; a step's history counts only while its definition is unchanged. Where there is no
history, `estimated_duration` is used, and 1 s where neither is known. Pure functions: the store reads
and writes the file.
"""
from __future__ import annotations


from .model import Workstream

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

SMOOTHING = 0.5          # weight of the newest run in the moving average
DEFAULT_DURATION = 1.0


def durations(ws: Workstream, history: Mapping[str, Any] | None) -> dict[str, float]:
    """Each step's expected duration: history (same definition) > estimated_duration > 1."""
    return dict(zip(ws.step_ids, expected(ws, history)))


def expected(ws: Workstream, history: Mapping[str, Any] | None) -> list[float]:
    """`durations` by file position."""
    out = [DEFAULT_DURATION if s.estimated_duration is None else float(s.estimated_duration)
           for s in ws.steps]
    known = (history or {}).get("steps") or {}
    if known:
        for i, s in enumerate(ws.steps):
            h = known.get(s.id)
            if h is not None and isinstance(h, dict) and h.get("definition_hash") == s.definition_hash() \
                    and isinstance(h.get("duration_s"), (int, float)):
                out[i] = float(h["duration_s"])
    return out


def updated(history: Mapping[str, Any] | None, ws: Workstream,
            observed: Mapping[str, float]) -> dict[str, Any]:
    """History with this run's observed durations (of steps that succeeded) folded in."""
    steps = dict((history or {}).get("steps") or {})
    for s in ws.steps:
        if s.id not in observed:
            continue
        new = float(observed[s.id])
        old = steps.get(s.id)
        h = s.definition_hash()
        if isinstance(old, dict) and old.get("definition_hash") == h \
                and isinstance(old.get("duration_s"), (int, float)):
            value = SMOOTHING * new + (1 - SMOOTHING) * float(old["duration_s"])
            runs = int(old.get("runs", 1)) + 1
        else:
            value, runs = new, 1
        steps[s.id] = {"duration_s": round(value, 4), "runs": runs, "definition_hash": h}
    return {"schema_version": 1, "workstream_id": ws.id, "steps": steps}


def priorities(ws: Workstream, history: Mapping[str, Any] | None, workers: int) -> dict[str, float]:
    """Scheduling rank of each step: its remaining critical path by expected durations.

    With one worker the order cannot change the run's length, so steps keep file order (as
    `parallel: false` promises) and only `priority` reorders them.
    """
    if workers <= 1:
        return {}
    rp, _ = ws.links.longest_paths(expected(ws, history))
    return dict(zip(ws.step_ids, rp))
