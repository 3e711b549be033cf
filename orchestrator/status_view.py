"""Text views for people at a terminal: the `status` view of a live run and the `run --dry-run` plan.

Both are pure functions of plain dicts — `render_status` of `state.json` (SPEC §3) and `render_plan` of
the scheduler's plan — with "now" passed in, so `cli` prints what they return and tests compare text.
`render_status` follows the SPEC §4 layout exactly: a header, then only the non-empty sections in the
order Completed (succeeded), Running, Pending, Blocked, Skipped, Failed (failed, timed out, cancelled),
and `Progress: done/total steps complete`, where "complete" means succeeded, as in the SPEC example
and the Completed section. Formatting helpers come from `orchestrator.report`.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import timezone
from itertools import repeat
from operator import gt

from orchestrator.fmt import human_duration, parse_iso, progress_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["render_status", "render_plan"]

_SECTIONS = ("Completed", "Running", "Pending", "Blocked", "Skipped", "Failed")
_SECTION_OF = {"succeeded": "Completed", "running": "Running", "pending": "Pending",
               "blocked": "Blocked", "skipped": "Skipped", "failed": "Failed",
               "timed_out": "Failed", "cancelled": "Failed"}


def _second(text: Any) -> str:
    """`2026-11-25T14:30:22.123Z` shown as `2026-11-25T14:30:22Z` (unparseable text as it is)."""
    dt = parse_iso(text)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if dt else str(text or "-")


def _duration(info: Mapping[str, Any]) -> float | None:
    value = info.get("duration_s")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    start, end = parse_iso(info.get("started_at")), parse_iso(info.get("finished_at"))
    return (end - start).total_seconds() if start and end else None


def _first_line(text: Any) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _entry(sid: str, info: Mapping[str, Any], steps: Mapping[str, Mapping[str, Any]],
           now_iso: str | None) -> list[str]:
    """The line (and for failures the error line) of one step in its section."""
    status = info.get("status")
    attempt = info.get("attempt")
    retried = isinstance(attempt, int) and attempt > 1
    if status == "succeeded":
        took = _duration(info)
        notes = ([human_duration(took)] if took is not None else []) + ([f"attempt {attempt}"] if retried else [])
        return [f"  ✓ {sid}" + (f" ({', '.join(notes)})" if notes else "")]
    if status == "running":
        line, notes = f"  ● {sid}", []
        index, count = info.get("task_index"), info.get("task_count")
        if isinstance(count, int) and count > 1 and isinstance(index, int):
            line += f" [task {index}/{count}]"
        else:
            start, now = parse_iso(info.get("started_at")), parse_iso(now_iso)
            if start and now:
                notes.append(f"running {human_duration((now - start).total_seconds())}")
        if retried:
            notes.append(f"attempt {attempt}")
        return [line + (f" ({', '.join(notes)})" if notes else "")]
    if status == "blocked":
        by = list(info.get("blocked_by") or [])
        if not by:   # older states: name the dependencies that ended badly
            by = [d for d in info.get("depends_on") or []
                  if steps.get(d, {}).get("status") not in (None, "succeeded", "pending", "running")]
        return [f"  ⊘ {sid}" + (f" (failed dependency: {', '.join(by)})" if by else "")]
    if status == "skipped":
        return [f"  – {sid} ({_first_line(info.get('error')) or 'skipped'})"]
    if status in ("failed", "timed_out", "cancelled"):
        tag = {"timed_out": " (timed out)", "cancelled": " (cancelled)"}.get(str(status), "")
        error = _first_line(info.get("error") or "")
        return [f"  ✗ {sid}{tag}"] + ([f"    Error: {error}"] if error else [])
    # pending, or a status this version does not know yet
    waiting = [d for d in info.get("depends_on") or [] if steps.get(d, {}).get("status") != "succeeded"]
    if waiting:
        return [f"  ○ {sid} (waiting for: {', '.join(waiting)})"]
    if isinstance(attempt, int) and attempt >= 1 and info.get("error"):
        return [f"  ○ {sid} (retry after attempt {attempt}: {_first_line(info['error'])})"]
    return [f"  ○ {sid}"]


def render_status(state: Mapping[str, Any], *, now_iso: str | None = None, stale: bool = False) -> str:
    """The SPEC §4 status view of a `state.json` dict. `stale`: the state says running but the
    orchestrator's pid is gone (the caller checks the pid; this stays pure)."""
    steps: Mapping[str, Mapping[str, Any]] = state.get("steps") or {}
    status = str(state.get("status", "?"))
    if stale:
        status = (f"stale (orchestrator pid {state.get('pid', '?')} is gone; resume with: orchestrator "
                  f"run --ws-id {state.get('workstream_id', '?')} --resume {state.get('run_id', '?')})")
    lines = [f"Run ID: {state.get('run_id', '?')}",
             f"Workstream: {state.get('workstream_id', '?')}",
             f"Status: {status}",
             f"Started: {_second(state.get('started_at'))}"]
    if state.get("finished_at"):
        lines.append(f"Finished: {_second(state.get('finished_at'))}")
    lines.append("")

    sections: dict[str, list[str]] = {name: [] for name in _SECTIONS}
    for sid, info in steps.items():
        section = _SECTION_OF.get(str(info.get("status")), "Pending")
        sections[section] += _entry(sid, info, steps, now_iso)
    for name in _SECTIONS:
        if sections[name]:
            lines += [f"{name}:", *sections[name]]
    done = sum(1 for info in steps.values() if info.get("status") == "succeeded")
    lines += ["---", progress_line(done, len(steps))]
    return "\n".join(lines)          # no final newline: the CLI echoes it


def _duration_cell(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else human_duration(seconds)


def _number(value: Any) -> float:
    if type(value) is float:                   # nearly always: the plan's own numbers
        return value
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _column_table(columns: list[list[str]], headers: list[str]) -> str:
    """tabulate's "simple" layout of string columns, built directly: tabulate needs ~70 µs a row,
    too slow for the plan of a 100 000-step workstream."""
    widths = [max(len(h), max(map(len, col), default=0)) for h, col in zip(headers, columns)]
    row = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [row.format(*headers).rstrip(), "  ".join("-" * w for w in widths)]
    # each column padded in C, then each row joined (the last column needs no padding)
    padded = [list(map(str.ljust, col, repeat(w))) for col, w in zip(columns[:-1], widths)]
    out.extend(map(str.rstrip, map("  ".join, zip(*padded, columns[-1]))) if columns else ())
    return "\n".join(out)


def render_plan(plan: Mapping[str, Any]) -> str:
    """The `run --dry-run` plan (`plan.build_plan`): steps in start order with their wave, the
    waves, the critical path. `plan["steps"]` holds one list per field, a row per step."""
    cols = plan.get("steps") or {}
    ids = list(map(str, cols.get("id") or []))
    n = len(ids)

    def column(name: str, default: Any) -> list[Any]:
        values = cols.get(name)
        if isinstance(values, list) and len(values) == n:
            return values
        values = list(values or [])[:n]
        return values + [default] * (n - len(values))

    def numbers(values: list[Any], unknown: Any = 0.0) -> list[Any]:
        """As floats (the plan's own values already are); None stays `unknown`."""
        if set(map(type, values)) <= {float}:
            return values
        return [unknown if v is None else _number(v) for v in values]

    def durations(values: list[Any]) -> list[str]:
        # a plan repeats few distinct durations: each is formatted once (-0.0 as 0.0)
        values = numbers(values, unknown=None)
        cells = {v: "-" if v is None else _duration_cell(v + 0.0) for v in set(values)}
        return list(map(cells.__getitem__, values))

    starts = numbers(column("start", 0.0))
    wave_no = column("wave", 0)
    waves = [list(w) for w in plan.get("waves") or []]
    rows: Any = range(n)
    keys = list(zip(starts, wave_no))
    if any(map(gt, keys, keys[1:])):                # usually already in start order
        rows = sorted(rows, key=lambda i: (keys[i], i))

    def pick(values: list[Any]) -> list[Any]:
        return values if type(rows) is range else [values[i] for i in rows]

    columns = [
        pick(ids),
        pick(list(map(str, wave_no))),
        pick(list(map("+{:.1f}s".format, starts))),
        pick(durations(column("estimated_duration", None))),
        pick(list(map(str, column("priority", 0)))),
        pick(durations([v or 0.0 for v in column("remaining_path", 0.0)])),
        pick([joined or "-" for joined in map(", ".join, column("depends_on", ()))]),
    ]
    headers = ["step", "wave", "start", "estimate", "priority", "path left", "depends on"]
    lines = [f"Plan for {plan.get('workstream_id', '?')}: {n} step{'s' if n != 1 else ''}"
             f" in {len(waves)} wave{'s' if len(waves) != 1 else ''}, max_workers {plan.get('max_workers', '?')}",
             "", _column_table(columns, headers), ""]
    lines += [f"wave {k}: {', '.join(wave)}" for k, wave in enumerate(waves, 1)]
    path = plan.get("critical_path") or []
    lines += ["", f"Critical path: {' -> '.join(path) or '-'} ({human_duration(_number(plan.get('critical_path_s')))})",
              f"Estimated makespan: {human_duration(_number(plan.get('estimated_makespan_s')))}"]
    return "\n".join(lines)
