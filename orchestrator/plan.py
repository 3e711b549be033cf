"""The `run --dry-run` plan: when each step would start under the limits, in waves.

The scheduler itself is run on a fake clock (`scheduler.simulate`), every step taking its expected
duration (history, else `estimated_duration`, else 1 s), so the plan shows exactly the order the real
run would choose. Linear in steps and edges: a 100 000-step workstream plans in about a second.
"""
from __future__ import annotations


from .graph import longest_paths
from .history import durations as expected_durations
from .model import Workstream
from .scheduler import simulate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping


def build_plan(ws: Workstream, *, workers: int, history: Mapping[str, Any] | None,
               serialize: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    deps = {s.id: list(s.depends_on) for s in ws.steps}
    durations = expected_durations(ws, history)
    path_left, path = longest_paths(deps, ws.step_ids, durations)
    # one worker keeps file order (see history.priorities): rank nothing but `priority`
    prio = path_left if workers > 1 else {}
    timeline = simulate(ws, max_workers=workers, priorities=prio, durations=durations,
                        serialize=serialize)
    waves: dict[float, list[str]] = {}
    for sid, start, _ in timeline:
        waves.setdefault(round(start, 9), []).append(sid)
    wave_of = {sid: i for i, ids in enumerate(waves.values(), 1) for sid in ids}
    by_id = {s.id: s for s in ws.steps}
    steps = [{"id": sid, "depends_on": deps[sid], "wave": wave_of[sid], "start": start,
              "priority": by_id[sid].priority, "remaining_path": path_left.get(sid, 0.0),
              "estimated_duration": durations[sid]} for sid, start, _ in timeline]
    return {"workstream_id": ws.id, "max_workers": workers, "steps": steps,
            "waves": list(waves.values()), "critical_path": path,
            "critical_path_s": path_left[path[0]] if path else 0.0,
            "estimated_makespan_s": max((end for _, _, end in timeline), default=0.0)}

