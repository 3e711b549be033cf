"""The `run --dry-run` plan: when each step would start under the limits, in waves.

The scheduler itself is run on a fake clock (`scheduler.timeline`), every step taking its expected
duration (history, else `estimated_duration`, else 1 s), so the plan shows exactly the order the real
run would choose. Linear in steps and edges: a 100 000-step workstream plans in about a second.
"""
from __future__ import annotations

from .history import expected as expected_durations
from .model import Workstream
from .scheduler import timeline

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping


def build_plan(ws: Workstream, *, workers: int, history: Mapping[str, Any] | None,
               serialize: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """The plan `status_view.render_plan` prints. `steps` is columns (one list per field, rows in
    start order), not a dict per step: with 100 000 steps the rows cost more than the scheduling."""
    ids, steps = ws.step_ids, ws.steps
    took = expected_durations(ws, history)
    path_left, path = ws.links.longest_paths(took)
    # one worker keeps file order (see history.priorities): rank nothing but `priority`
    rank = path_left if workers > 1 else [0.0] * len(ids)
    order, starts, ends = timeline(ws, max_workers=workers, took=took, rank=rank,
                                   serialize=serialize)
    started = list(map(ids.__getitem__, order))
    # a wave: the steps that start at the same moment (starts never decrease along the timeline)
    waves: list[list[str]] = []
    wave_no: list[int] = []
    last = None
    for sid, start in zip(started, starts):
        moment = round(start, 9)
        if moment != last:
            waves.append([])
            last = moment
        waves[-1].append(sid)
        wave_no.append(len(waves))
    columns = {"id": started, "depends_on": [steps[i].depends_on for i in order], "wave": wave_no,
               "start": starts, "priority": [steps[i].priority for i in order],
               "remaining_path": list(map(path_left.__getitem__, order)),
               "estimated_duration": list(map(took.__getitem__, order))}
    return {"workstream_id": ws.id, "max_workers": workers, "steps": columns, "waves": waves,
            "critical_path": list(map(ids.__getitem__, path)),
            "critical_path_s": path_left[path[0]] if path else 0.0,
            "estimated_makespan_s": max(ends, default=0.0)}
