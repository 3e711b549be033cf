"""`execution_report.md`: the markdown report of a finished run, for GitHub.

A pure function of plain dicts (the `results_summary.json` summary of SPEC §3 and the step log tails
the caller read): no file I/O, no clock reads — "now" is passed in when it matters — so `store` writes
what it returns and tests check it on data. The report holds a summary table, the time-saved sentence,
a Mermaid gantt of the real start/end offsets and a Mermaid flowchart coloured by final status (both
left out above DIAGRAM_MAX_STEPS steps), per-step and acceptance-test tables, failures with their log
tails, the steps that did not run, and the recommendations of `analysis`. Readers never trust the
summary to be complete: missing keys, steps that never started, interrupted runs and a zero wall time
all render instead of raising.

The renderers' other pieces live beside it — `fmt` (durations, sizes, timestamps, symbols),
`analysis` (critical path, concurrency, advice), `junit` (junit.xml), `status_view` (status text and
the dry-run plan) — and are importable from here too, as they were when this module held them all.
"""
from __future__ import annotations

from _collections_abc import Mapping, Sequence   # collections.abc, without collections

from .analysis import (BAD_RUN, critical_path, id_list, interval, is_kept, max_concurrency,
                       recommendations, steps_of)
from .fmt import (SYMBOLS, clean, human_bytes, human_duration, iso, number, parse_iso, plain_line,
                  progress_line)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = [
    "human_bytes", "human_duration", "iso", "parse_iso", "plain_line", "progress_line",
    "critical_path", "max_concurrency", "recommendations", "render_report", "render_junit",
    "render_status", "render_plan", "SYMBOLS",
]

RESULT_LINE = {"succeeded": "✅ succeeded", "failed": "❌ failed", "interrupted": "⚠️ interrupted"}
LOG_TAIL_LINES = 20
ERROR_CELL_CHARS = 80
DIAGRAM_MAX_STEPS = 200   # above this, the report's Mermaid timeline and flowchart are left out


# --- markdown text -------------------------------------------------------------------------------

# text that every step below would leave as it is: printable (so no ESC, CR or tab), single spaces
# between words, none of the characters they escape (the usual step id, worker and command)
_CELL_SPECIAL = frozenset("\\|<>`")


def _plain(text: Any, special: frozenset[str] = _CELL_SPECIAL) -> bool:
    r"""A printable str of single-spaced words without `special` characters: what a cleaning step
    would return unchanged (`[^\s<special>]+(?: [^\s<special>]+)*` in full; printable text has no
    other white space than " ", and no regex: see `lean`)."""
    return (type(text) is str and text.isprintable() and text[:1] not in ("", " ") and text[-1] != " "
            and "  " not in text and special.isdisjoint(text))


def _md_cell(text: Any, limit: int | None = None) -> str:
    """One table cell: one line, pipes escaped, HTML neutralised, optionally truncated."""
    if (type(text) is str and not text) or (_plain(text) and (not limit or len(text) <= limit)):
        return text
    flat = " ".join(clean(text).split())
    if limit and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: Any) -> str:
    """An inline code span that survives backticks and pipes inside table cells."""
    if _plain(text):
        return f"`{text}`"
    flat = " ".join(clean(text).split()).replace("|", "\\|")
    if "`" not in flat:                 # the usual case (a step id, a command): one tick each side
        return f"`{flat}`"
    import re   # backticks inside a cell: rare
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


def _fenced(text: str, info: str = "text") -> list[str]:
    """A fenced block longer than any backtick run inside, so a log cannot close it early."""
    import re   # a log tail of a failure
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text, fence]


_GANTT_WORDS = frozenset(("title", "section", "dateFormat", "axisFormat", "excludes", "includes",
                          "todayMarker", "tickInterval", "weekday", "click", "gantt"))
_LABEL_SPECIAL = frozenset(":#;")
_LABEL_BLANKS = str.maketrans(":#;", "   ")


def _mermaid_label(text: str) -> str:
    """A gantt task label: `:` `#` `;` end or comment a task line, so they go."""
    if _plain(text, _LABEL_SPECIAL) and text.split(" ", 1)[0] not in _GANTT_WORDS:
        return text   # the usual step id: nothing below would change it
    label = clean(text).translate(_LABEL_BLANKS).strip() or "step"
    if label.split()[0] in _GANTT_WORDS:
        label = "step " + label       # a keyword at the start would be read as a directive
    return " ".join(label.split())


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
        span = interval(step)
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
        label = clean(s["id"]).replace('"', "#quot;")
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
    cells = [list(map(str, row)) for row in rows]
    columns = zip(*cells) if cells else [()] * len(headers)
    widths = [max(len(h), max(map(len, col), default=0)) for h, col in zip(headers, columns)]

    def line(parts: Sequence[str]) -> str:
        return "| " + " | ".join(map(str.ljust, parts, widths)) + " |"

    return [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)]


def _step_table(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    cells: dict[tuple[str, Any], str] = {}   # the few statuses and workers of a run, each made once

    def cell(kind: str, value: Any, make: Callable[[Any], str]) -> str:
        if type(value) is not str:
            return make(value)
        text = cells.get((kind, value))
        if text is None:
            text = cells[kind, value] = make(value)
        return text

    for s in steps:
        start = number(s.get("start_offset_s"))
        cpu = number(s.get("cpu_time_s"))
        status = cell("status", s.get("status"), _status_cell)
        if is_kept(s):
            status += " (kept from an earlier session)"
        rows.append([_code(s["id"]), status, str(s.get("attempts", "-")),
                     human_duration(number(s.get("duration_s"))),
                     "-" if start is None else f"+{start:.2f}s",
                     human_bytes(number(s.get("peak_rss_bytes"))),
                     "-" if cpu is None else f"{cpu:.2f}s",
                     cell("worker", s.get("worker") or "-", _md_cell),
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
                         human_duration(number(t.get("duration_s")))])
    if not rows:
        return []
    table = _github_table(rows, ["Step", "Command", "Status", "Exit code", "Duration"])
    return ["## Acceptance tests", "", *table, ""]


def _time_saved(totals: Mapping[str, Any]) -> str:
    wall = number(totals.get("wall_time_s")) or 0.0
    sequential = number(totals.get("sequential_time_s")) or 0.0
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
        error = clean(s.get("error") or "").strip()
        if "\n" in error:
            lines += ["**Error:**", "", *_fenced(error), ""]
        elif error:
            lines += [f"**Error:** {_md_cell(error)}", ""]
        tail = clean(log_tails.get(sid) or "").rstrip().splitlines()[-LOG_TAIL_LINES:]
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
            reason = f"blocked by {id_list([str(b) for b in by])}" if by else "blocked"
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
    steps = steps_of(summary)
    totals = summary.get("summary") or {}
    ws_id, title = str(summary.get("workstream_id", "?")), str(summary.get("title") or "")
    status = str(summary.get("status", "?"))
    heading = f"# Execution report: {ws_id}" + (f" — {_md_cell(title)}" if title else "")
    out = [heading, "",
           f"- **Result:** {RESULT_LINE.get(status, status)}",
           f"- **Run ID:** `{summary.get('run_id', '?')}`",
           f"- **Started:** {summary.get('started_at') or '-'}",
           f"- **Finished:** {summary.get('finished_at') or '-'}",
           f"- **Wall time:** {human_duration(number(totals.get('wall_time_s')))}", ""]

    counts = ["total", "succeeded", "failed", "timed_out", "blocked", "skipped", "cancelled"]
    if totals.get("pending"):
        counts.append("pending")
    rows = [[name.replace("_", " ").capitalize(), str(totals.get(name, 0))] for name in counts]
    speedup, rate = number(totals.get("speedup")), number(totals.get("success_rate"))
    rows += [["Wall time", human_duration(number(totals.get("wall_time_s")))],
             ["Sequential time", human_duration(number(totals.get("sequential_time_s")))],
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


def __getattr__(name: str) -> Any:
    """`render_junit` (junit), `render_status` and `render_plan` (status_view), imported on first use."""
    if name == "render_junit":
        from orchestrator.junit import render_junit
        return render_junit
    if name in ("render_status", "render_plan"):
        from orchestrator import status_view
        return getattr(status_view, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
