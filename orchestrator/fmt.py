"""Formatting shared by every renderer and the console: durations, sizes, timestamps, status symbols,
progress lines, and text from step output made safe to show (terminal colour codes and control
characters removed). Pure functions of their arguments; `iso` caches the formatted second it saw last.
"""
from __future__ import annotations

import time
from _collections_abc import Mapping   # collections.abc, without collections

from .lean import Pattern, json_encoder  # noqa: F401 - json_encoder: the renderers' encoder, here as before

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any

SYMBOLS: Mapping[str, str] = {
    "succeeded": "✓", "failed": "✗", "timed_out": "⏱", "cancelled": "⏹", "blocked": "⊘",
    "skipped": "–", "pending": "○", "running": "●",
}


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
    from datetime import datetime, timezone   # not at import: a run never parses a time (~1 ms)
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


def number(value: Any) -> float | None:
    """A finite number from the summary, or None (bools are not numbers here)."""
    kind = type(value)
    if kind is float:                    # the usual case first: the report asks ~11 times a step
        return value if value - value == 0.0 else None
    if kind is int:
        return float(value)
    if kind is bool or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


ANSI = Pattern(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
CONTROL = Pattern(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: Any) -> str:
    """Log or error text without terminal colour codes and control characters."""
    if type(text) is str and text.isprintable():   # no ESC, CR or control character: nothing to do
        return text
    return CONTROL.sub("", ANSI.sub("", str(text))).replace("\r\n", "\n").replace("\r", "\n")

