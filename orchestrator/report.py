"""Renderers of a finished run: the markdown report, the JUnit XML and the small formatting helpers.

Everything here is a pure function of plain dicts (the `results_summary.json` summary of SPEC §3 and
the step log tails the caller read): no file I/O, no clock reads — "now" is passed in when it matters —
so `store` writes what these return and tests check them on data. `render_report` builds
`execution_report.md` for GitHub (summary table, the time-saved sentence, a Mermaid gantt of the real
start/end offsets, a Mermaid flowchart coloured by final status, per-step and acceptance-test tables,
failures with their log tails, and recommendations computed from the data: critical path, idle
workers, timeouts nearly hit, rate-limit waits, flaky steps, failures that blocked others).
`render_junit` turns acceptance tests — and steps that did not succeed without a failing test — into
JUnit XML for CI. `human_bytes`, `human_duration`, `iso`, `parse_iso`, `plain_line` and `progress_line`
are shared with the dispatcher's progress output and with `status_view` (status text and the dry-run
plan, also importable from here). Readers never trust the summary to be complete: missing keys, steps
that never started, interrupted runs and a zero wall time all render instead of raising.
"""
from __future__ import annotations

import re
import time

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any


__all__ = [
    "human_bytes", "human_duration", "iso", "parse_iso", "plain_line", "progress_line",
    "critical_path", "max_concurrency", "recommendations", "render_report", "render_junit",
    "render_status", "render_plan", "SYMBOLS",
]

SYMBOLS: Mapping[str, str] = {
    "succeeded": "✓", "failed": "✗", "timed_out": "⏱", "cancelled": "⏹", "blocked": "⊘",
    "skipped": "–", "pending": "○", "running": "●",
}
BAD_RUN = ("failed", "timed_out", "cancelled")      # statuses that ran and ended badly
RESULT_LINE = {"succeeded": "✅ succeeded", "failed": "❌ failed", "interrupted": "⚠️ interrupted"}
LOG_TAIL_LINES = 20
ERROR_CELL_CHARS = 80
DIAGRAM_MAX_STEPS = 200   # above this, the report's Mermaid timeline and flowchart are left out


# --- helpers shared with the dispatcher and status_view ------------------------------------------

def human_bytes(n: float | None) -> str:
    """`512 B`, `12.3 MiB` (binary units); `-` for unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(s: float | None) -> str:
    """`2.1s` under a minute, `3m 05s` under an hour, `1h 02m` beyond; `-` for unknown."""
    if s is None:
        return "-"
    s = max(0.0, float(s))
    if round(s, 1) < 60:
        return f"{s:.1f}s"
    if round(s) < 3600:
        minutes, seconds = divmod(int(round(s)), 60)
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(int(round(s / 60)), 60)
    return f"{hours}h {minutes:02d}m"


def iso(ts_epoch: float) -> str:
    """Epoch seconds as UTC ISO 8601 with milliseconds: `2026-11-25T14:30:22.123Z`."""
    ms = int(round(ts_epoch * 1000))    # round once, so .9996 carries into the seconds
    sec = ms // 1000
    if sec != _iso_second[0]:           # a run's timestamps share a few seconds: format each once
        _iso_second[:] = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
    return f"{_iso_second[1]}.{ms % 1000:03d}Z"


_iso_second: list = [None, ""]


def parse_iso(text: Any) -> datetime | None:
    """An ISO 8601 string (`Z` or an offset; naive means UTC) as an aware datetime, else None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def plain_line(ts_epoch: float, symbol: str, step_id: str, detail: str = "") -> str:
    """`[12:30:01] ✓ step-01 (2.1s)` in local time; `detail` is appended verbatim after a space."""
    clock = time.strftime("%H:%M:%S", time.localtime(ts_epoch))
    line = f"[{clock}] {symbol} {step_id}"
    return f"{line} {detail}" if detail else line


def progress_line(done: int, total: int) -> str:
    return f"Progress: {done}/{total} steps complete"


def _num(value: Any) -> float | None:
    """A finite number from the summary, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


# --- text safety ---------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# what XML 1.0 does not allow, as a positive class (the negated one over all of Unicode takes 5 ms to
# compile, at every run's end)
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: Any) -> str:
    """Log or error text without terminal colour codes and control characters."""
    return _CONTROL.sub("", _ANSI.sub("", str(text))).replace("\r\n", "\n").replace("\r", "\n")


def _md_cell(text: Any, limit: int | None = None) -> str:
    """One table cell: one line, pipes escaped, HTML neutralised, optionally truncated."""
    flat = " ".join(_clean(text).split())
    if limit and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: Any) -> str:
    """An inline code span that survives backticks and pipes inside table cells."""
    flat = " ".join(_clean(text).split()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


def _fenced(text: str, info: str = "text") -> list[str]:
    """A fenced block longer than any backtick run inside, so a log cannot close it early."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text, fence]


def _mermaid_label(text: str) -> str:
    """A gantt task label: `:` `#` `;` end or comment a task line, so they go."""
    label = re.sub(r"[:#;]", " ", _clean(text)).strip() or "step"
    if label.split()[0] in ("title", "section", "dateFormat", "axisFormat", "excludes", "includes",
                            "todayMarker", "tickInterval", "weekday", "click", "gantt"):
        label = "step " + label       # a keyword at the start would be read as a directive
    return " ".join(label.split())


# --- analysis of the run's data ------------------------------------------------------------------

def _steps(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for s in summary.get("steps") or [] if isinstance(s, Mapping) and "id" in s]


def _kept(step: Mapping[str, Any]) -> bool:
    """Succeeded in an earlier session of a resumed run: it did not run (or take time) in this one."""
    return bool(step.get("kept_from_earlier_session"))


def _interval(step: Mapping[str, Any]) -> tuple[float, float] | None:
    """[start, end] offsets of a step that ran in this session; a kept step's offsets are negative."""
    start = _num(step.get("start_offset_s"))
    if start is None or _kept(step):
        return None
    end = _num(step.get("end_offset_s"))
    if end is None:
        duration = _num(step.get("duration_s"))
        end = start + duration if duration is not None else start
    return start, max(start, end)


def critical_path(steps: Sequence[Mapping[str, Any]]) -> tuple[list[str], float]:
    """The chain over `depends_on` with the largest sum of real `duration_s` (unknown counts 0)."""
    ids = [str(s["id"]) for s in steps]
    known = set(ids)
    deps = {str(s["id"]): [d for d in s.get("depends_on") or [] if d in known] for s in steps}
    weight = {str(s["id"]): 0.0 if _kept(s) else _num(s.get("duration_s")) or 0.0 for s in steps}
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
        span = _interval(step)
        if span is not None:
            events += [(span[0], 1), (span[1], -1)]
    running = peak = 0
    for _, delta in sorted(events):          # -1 sorts before +1 at the same instant
        running += delta
        peak = max(peak, running)
    return peak


def _names(ids: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _rate_limit_waits(summary: Mapping[str, Any]) -> tuple[float, list[tuple[str, float]]]:
    """(spacing, [(step, seconds waited)]) for steps started exactly one spacing after the previous
    start although they were ready earlier — the signature of a start held by the rate limiter."""
    execution = summary.get("execution") or {}
    spacing = _num(execution.get("rate_limit_delay")) or 0.0
    rate = _num(execution.get("rate_limit"))
    if rate and rate > 0:
        spacing = max(spacing, 1.0 / rate)
    if spacing <= 0:
        return 0.0, []
    steps = _steps(summary)
    ends = {str(s["id"]): span[1] for s in steps if (span := _interval(s)) is not None}
    started = sorted((span[0], i, s) for i, s in enumerate(steps) if (span := _interval(s)))
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
    steps = _steps(summary)
    totals = summary.get("summary") or {}
    execution = summary.get("execution") or {}
    wall = _num(totals.get("wall_time_s")) or 0.0
    advice: list[str] = []

    for hold in summary.get("adaptive_holds") or []:
        start, end = _num(hold.get("start_offset_s")), _num(hold.get("end_offset_s"))
        span = f"from +{start:.1f} s to +{end:.1f} s" if start is not None and end is not None else (
            f"from +{start:.1f} s to the end" if start is not None else "")
        advice.append(f"Adaptive scaling held new starts {span}: {_clean(hold.get('reason'))}.")

    path, length = critical_path(steps)
    if path and length > 0:
        text = f"Critical path: {' → '.join(f'`{i}`' for i in path)} took {length:.1f} s"
        if wall > 0:
            text += f", {min(length / wall, 1.0):.0%} of the wall time ({wall:.1f} s)"
            if length / wall >= 0.9:
                text += "; only shortening these steps makes the run faster — more workers will not"
        advice.append(text + ".")

    workers = execution.get("max_workers")
    peak = max(max_concurrency(steps), int(_num(totals.get("max_concurrency")) or 0))
    # An interrupted run stopped scheduling early, so its concurrency says nothing about the pool.
    if (isinstance(workers, int) and execution.get("parallel", True) is not False
            and summary.get("status") != "interrupted" and 0 < peak < workers and len(steps) > 1):
        advice.append(f"`max_workers` is {workers} but at most {peak} step{'s' if peak > 1 else ''} "
                      f"ever ran at once: dependencies or the rate limit, not the pool, set the pace "
                      f"(`max_workers: {peak}` would have done as well).")

    for step in steps:
        duration, limit = _num(step.get("duration_s")), _num(step.get("timeout_s"))
        attempts = step.get("attempts")
        # duration_s runs from the first attempt's start, so after retries it is no single attempt's time
        if duration is None or not limit or _kept(step) or (isinstance(attempts, int) and attempts > 1):
            continue
        if step.get("status") == "timed_out":
            advice.append(f"`{step['id']}` hit its timeout ({limit:g} s): raise `timeout` or split the step.")
        elif duration / limit >= 0.8:
            advice.append(f"`{step['id']}` used {duration / limit:.0%} of its timeout ({limit:g} s): "
                          f"raise `timeout` before it starts failing.")

    spacing, waits = _rate_limit_waits(summary)
    if waits:
        names = [sid for sid, _ in waits]
        advice.append(f"The rate limit (one start every {spacing:g} s) held back {_names(names)}: they "
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
                          f"({_names(blocked)}): fix it first.")
    return advice


# --- execution_report.md -------------------------------------------------------------------------

_CLASS_STYLE = {
    "succeeded": "fill:#d4edda,stroke:#28a745,color:#155724",
    "failed": "fill:#f8d7da,stroke:#dc3545,color:#721c24",
    "timed_out": "fill:#ffe5b4,stroke:#fd7e14,color:#7a3e00",
    "cancelled": "fill:#e9d8fd,stroke:#6f42c1,color:#3d2a6b",
    "blocked": "fill:#fff3cd,stroke:#ffc107,color:#856404",
    "skipped": "fill:#e2e3e5,stroke:#6c757d,color:#383d41",
    "pending": "fill:#ffffff,stroke:#adb5bd,color:#495057,stroke-dasharray:4 3",
    "running": "fill:#cce5ff,stroke:#007bff,color:#004085",
}


def _gantt(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    bars = []
    for index, step in enumerate(steps):
        span = _interval(step)
        if span is None:
            continue                           # never started: no bar
        status = step.get("status")
        tag = "done" if status == "succeeded" else "crit" if status in BAD_RUN else "active"
        start_ms, end_ms = int(round(span[0] * 1000)), int(round(span[1] * 1000))
        bars.append(f"    {_mermaid_label(str(step['id']))} :{tag}, s{index}, {start_ms}, {end_ms}")
    if not bars:
        return ["_No step started._"]
    return ["```mermaid", "gantt", "    title Run timeline (offsets from the run's start)",
            "    dateFormat x", "    axisFormat %M:%S", "    todayMarker off", "    section Steps",
            *bars, "```"]


def _flowchart(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    node = {str(s["id"]): f"s{i}" for i, s in enumerate(steps)}
    lines = ["```mermaid", "flowchart TD"]
    for s in steps:
        label = _clean(s["id"]).replace('"', "#quot;")
        lines.append(f'    {node[str(s["id"])]}["{label}"]')
    for s in steps:
        for dep in s.get("depends_on") or []:
            if dep in node:
                lines.append(f"    {node[dep]} --> {node[str(s['id'])]}")
    by_status: dict[str, list[str]] = {}
    for s in steps:
        status = str(s.get("status"))
        if status in _CLASS_STYLE:
            by_status.setdefault(status, []).append(node[str(s["id"])])
    for status, members in by_status.items():
        lines.append(f"    classDef {status} {_CLASS_STYLE[status]};")
        lines.append(f"    class {','.join(members)} {status};")
    return lines + ["```"]


def _status_cell(status: Any) -> str:
    return f"{SYMBOLS.get(str(status), '?')} {str(status).replace('_', ' ')}"


def _github_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> list[str]:
    """tabulate's "github" layout, built directly: tabulate costs ~70 µs a row (70 ms at the end of
    a 1000-step run) and 16 ms to import, at the end of every run."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(parts: Sequence[str]) -> str:
        return "| " + " | ".join(p.ljust(w) for p, w in zip(parts, widths)) + " |"

    return [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)]


def _step_table(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for s in steps:
        start = _num(s.get("start_offset_s"))
        cpu = _num(s.get("cpu_time_s"))
        status = _status_cell(s.get("status")) + (" (kept from an earlier session)" if _kept(s) else "")
        rows.append([_code(s["id"]), status, str(s.get("attempts", "-")),
                     human_duration(_num(s.get("duration_s"))),
                     "-" if start is None else f"+{start:.2f}s",
                     human_bytes(_num(s.get("peak_rss_bytes"))),
                     "-" if cpu is None else f"{cpu:.2f}s",
                     _md_cell(s.get("worker") or "-"),
                     _md_cell(s.get("error") or "", ERROR_CELL_CHARS)])
    headers = ["Step", "Status", "Attempts", "Duration", "Start", "Peak memory", "CPU time", "Worker",
               "Error"]
    return _github_table(rows, headers)


def _tests_table(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for s in steps:
        for t in s.get("acceptance_tests") or []:
            status = str(t.get("status"))
            mark = {"passed": "✓", "failed": "✗", "timed_out": "⏱"}.get(status, "–")
            exit_code = t.get("exit_code")
            rows.append([_code(s["id"]), _code(t.get("command", "")), f"{mark} {status.replace('_', ' ')}",
                         "-" if exit_code is None else str(exit_code),
                         human_duration(_num(t.get("duration_s")))])
    if not rows:
        return []
    table = _github_table(rows, ["Step", "Command", "Status", "Exit code", "Duration"])
    return ["## Acceptance tests", "", *table, ""]


def _time_saved(totals: Mapping[str, Any]) -> str:
    wall = _num(totals.get("wall_time_s")) or 0.0
    sequential = _num(totals.get("sequential_time_s")) or 0.0
    if wall <= 0 or sequential <= 0:
        return "No step time was recorded, so there is no speedup to report."
    speedup = sequential / wall
    saved = 1 - wall / sequential
    how = f"{saved:.0%} time saved" if saved > 0 else "no time saved"
    return (f"Sequential execution would have taken {sequential:.1f} s; parallel execution took "
            f"{wall:.1f} s ({how}, {speedup:.2f}× speedup).")


def _failures(steps: Sequence[Mapping[str, Any]], log_tails: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    for s in steps:
        if s.get("status") not in BAD_RUN:
            continue
        sid = str(s["id"])
        exit_code = s.get("exit_code")
        lines += [f"### {_code(sid)} — {str(s.get('status')).replace('_', ' ')}"
                  + ("" if exit_code is None else f" (exit code {exit_code})"), ""]
        error = _clean(s.get("error") or "").strip()
        if "\n" in error:
            lines += ["**Error:**", "", *_fenced(error), ""]
        elif error:
            lines += [f"**Error:** {_md_cell(error)}", ""]
        tail = _clean(log_tails.get(sid) or "").rstrip().splitlines()[-LOG_TAIL_LINES:]
        log_file = s.get("log_file") or f"steps/{sid}.log"
        if tail:
            lines += [f"Last {len(tail)} lines of {_code(log_file)}:", "", *_fenced("\n".join(tail)), ""]
        else:
            lines += [f"_No output in {_code(log_file)}._", ""]
    return ["## Failures", "", *lines] if lines else []


def _not_run(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    held, pending = [], []
    for s in steps:
        sid, status = _code(s["id"]), s.get("status")
        if status == "blocked":
            by = s.get("blocked_by") or []
            reason = f"blocked by {_names([str(b) for b in by])}" if by else "blocked"
            held.append(f"- {sid} — {reason}" + (f": {_md_cell(s['error'])}" if s.get("error") else ""))
        elif status == "skipped":
            held.append(f"- {sid} — skipped: {_md_cell(s.get('error') or 'stopped by the failure policy')}")
        elif status == "pending":
            pending.append(f"- {sid}")
    out: list[str] = []
    if held:
        out += ["## Blocked and skipped", "", *held, ""]
    if pending:
        out += ["## Not started", "", "The run was interrupted before these steps started:", "", *pending, ""]
    return out


def render_report(summary: Mapping[str, Any], *, log_tails: Mapping[str, str],
                  now_iso: str | None = None) -> str:
    """`execution_report.md` for a summary dict (SPEC §3); `log_tails` maps step id to log text."""
    steps = _steps(summary)
    totals = summary.get("summary") or {}
    ws_id, title = str(summary.get("workstream_id", "?")), str(summary.get("title") or "")
    status = str(summary.get("status", "?"))
    heading = f"# Execution report: {ws_id}" + (f" — {_md_cell(title)}" if title else "")
    out = [heading, "",
           f"- **Result:** {RESULT_LINE.get(status, status)}",
           f"- **Run ID:** `{summary.get('run_id', '?')}`",
           f"- **Started:** {summary.get('started_at') or '-'}",
           f"- **Finished:** {summary.get('finished_at') or '-'}",
           f"- **Wall time:** {human_duration(_num(totals.get('wall_time_s')))}", ""]

    counts = ["total", "succeeded", "failed", "timed_out", "blocked", "skipped", "cancelled"]
    if totals.get("pending"):
        counts.append("pending")
    rows = [[name.replace("_", " ").capitalize(), str(totals.get(name, 0))] for name in counts]
    speedup, rate = _num(totals.get("speedup")), _num(totals.get("success_rate"))
    rows += [["Wall time", human_duration(_num(totals.get("wall_time_s")))],
             ["Sequential time", human_duration(_num(totals.get("sequential_time_s")))],
             ["Speedup", "-" if speedup is None else f"{speedup:.2f}×"],
             ["Success rate", "-" if rate is None else f"{rate:.0%}"]]
    out += ["## Summary", "", *_github_table(rows, ["Metric", "Value"]), "",
            _time_saved(totals), ""]
    if len(steps) > DIAGRAM_MAX_STEPS:
        # Mermaid refuses diagrams of more than 50 000 characters, and a chart of a thousand bars
        # tells nobody anything; the table below has every step's start and duration
        note = (f"_{len(steps)} steps: too many for a diagram (more than {DIAGRAM_MAX_STEPS}); the "
                f"Steps table has each start and duration, and `orchestrator graph` draws the "
                f"dependencies._")
        out += ["## Timeline", "", note, ""]
    else:
        out += ["## Timeline", "", *_gantt(steps), ""]
        if steps:
            out += ["## Dependencies", "", *_flowchart(steps), ""]
    if steps:
        out += ["## Steps", "", *_step_table(steps), ""]
    out += _tests_table(steps)
    out += _failures(steps, log_tails)
    out += _not_run(steps)
    advice = recommendations(summary)
    out += ["## Recommendations", "", *([f"- {a}" for a in advice] or ["_Nothing to recommend._"]), ""]
    if now_iso:
        out += [f"_Report generated at {now_iso}._", ""]
    return "\n".join(out)


# --- junit.xml -----------------------------------------------------------------------------------

def _xml(text: Any) -> str:
    return _XML_ILLEGAL.sub("", _ANSI.sub("", str(text)))


def _secs(value: Any) -> str:
    return f"{max(0.0, _num(value) or 0.0):.3f}"


def render_junit(summary: Mapping[str, Any]) -> str:
    """JUnit XML: a testcase per acceptance test, plus `(step)` for a step that did not succeed
    without a failing test of its own (so CI always sees why the run failed)."""
    import xml.etree.ElementTree as ET   # 5 ms of import, needed once at the end of a run
    cases: list[ET.Element] = []
    for step in _steps(summary):
        sid, status = str(step["id"]), str(step.get("status"))
        tests = [t for t in step.get("acceptance_tests") or [] if isinstance(t, Mapping)]
        for t in tests:
            case = ET.Element("testcase", classname=_xml(sid), name=_xml(t.get("command", "")),
                              time=_secs(t.get("duration_s")))
            t_status = str(t.get("status"))
            if t_status in ("failed", "timed_out"):
                message = ("timed out" if t_status == "timed_out"
                           else f"exit code {t.get('exit_code')}")
                failure = ET.SubElement(case, "failure", message=message, type=t_status)
                failure.text = _xml(t.get("output_tail") or "")
            elif t_status != "passed":
                reason = "cancelled" if t_status == "cancelled" else f"not run: step {status.replace('_', ' ')}"
                ET.SubElement(case, "skipped", message=reason)
            cases.append(case)
        if status == "succeeded" or any(t.get("status") in ("failed", "timed_out") for t in tests):
            continue
        case = ET.Element("testcase", classname=_xml(sid), name="(step)", time=_secs(step.get("duration_s")))
        error = _xml(step.get("error") or "")
        if status in ("failed", "timed_out"):
            failure = ET.SubElement(case, "failure", message=error.split("\n")[0] or status, type=status)
            failure.text = error
        else:
            by = step.get("blocked_by") or []
            reason = (f"blocked by {', '.join(map(str, by))}" if status == "blocked" and by
                      else error.split("\n")[0] or ("not started: run interrupted" if status == "pending"
                                                     else status))
            ET.SubElement(case, "skipped", message=_xml(reason))
        cases.append(case)

    failures = sum(1 for c in cases if c.find("failure") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    wall = _secs((summary.get("summary") or {}).get("wall_time_s"))
    root = ET.Element("testsuites", name="orchestrator", time=wall, **counts)
    started = parse_iso(summary.get("started_at"))
    suite = ET.SubElement(root, "testsuite", name=_xml(summary.get("workstream_id", "")), time=wall,
                          timestamp=(started.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
                                     if started else ""), **counts)
    properties = ET.SubElement(suite, "properties")
    for key in ("run_id", "status", "started_at", "finished_at"):
        ET.SubElement(properties, "property", name=key, value=_xml(summary.get(key) or ""))
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def __getattr__(name: str) -> Any:
    """`render_status` and `render_plan` live in `status_view` (which imports the helpers above)."""
    if name in ("render_status", "render_plan"):
        from orchestrator import status_view
        return getattr(status_view, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
