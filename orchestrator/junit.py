"""`junit.xml`: a run's acceptance tests as JUnit XML for CI, plus a `(step)` case for each step that did
not succeed without a failing test of its own (so CI always shows why the run failed). A pure function
of the `results_summary.json` dict, written by hand in ElementTree's exact format (its import is
5 ms at the end of every run).
"""
from __future__ import annotations

from _collections_abc import Mapping   # collections.abc, without collections

from .analysis import steps_of
from .fmt import ANSI, number, parse_iso

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# what XML 1.0 does not allow, as a positive class (the negated one over all of Unicode takes 5 ms to
# compile); compiled when first needed, as the text is seldom anything but printable (0.4 ms)
_XML_ILLEGAL = "[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]"


def _xml(text: Any) -> str:
    if type(text) is str and text.isprintable():   # no control character, surrogate or U+FFFE/F
        return text
    import re
    return re.sub(_XML_ILLEGAL, "", ANSI.sub("", str(text)))


def _timestamp(text: Any) -> str:
    """JUnit's `timestamp`: the run's start in UTC to the second (ours, `fmt.iso`'s UTC to the
    millisecond: its first 19 characters)."""
    if isinstance(text, str) and len(text) == 24 and text[19] == "." and text[23] == "Z" \
            and text[10] == "T" and text[:4].isdigit() and text[20:23].isdigit():
        return text[:19]
    started = parse_iso(text)
    if started is None:
        return ""
    from datetime import timezone
    return started.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _secs(value: Any) -> str:
    return f"{max(0.0, number(value) or 0.0):.3f}"


def _attr(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\r", "&#13;").replace("\n", "&#10;").replace("\t", "&#09;"))


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _El:
    """An XML element written as `xml.etree.ElementTree.indent` + `tostring` would write it (the
    same bytes, tested against ElementTree), without its 5 ms import at the end of every run."""

    __slots__ = ("tag", "attrs", "children", "text")

    def __init__(self, tag: str, text: str = "", **attrs: str):
        self.tag, self.attrs, self.children, self.text = tag, attrs, [], text

    def add(self, tag: str, text: str = "", **attrs: str) -> "_El":
        child = _El(tag, text, **attrs)
        self.children.append(child)
        return child

    def has(self, tag: str) -> bool:
        return any(c.tag == tag for c in self.children)

    def write(self, out: list[str], depth: int = 0) -> None:
        pad = "\n" + "  " * depth
        attrs = "".join(f' {k}="{_attr(v)}"' for k, v in self.attrs.items())
        if not self.children and not self.text:
            out.append(f"<{self.tag}{attrs} />")
            return
        out.append(f"<{self.tag}{attrs}>{_text(self.text)}")
        if self.children:
            for c in self.children:
                out.append(pad + "  ")
                c.write(out, depth + 1)
            out.append(pad)
        out.append(f"</{self.tag}>")


def render_junit(summary: Mapping[str, Any]) -> str:
    """JUnit XML: a testcase per acceptance test, plus `(step)` for a step that did not succeed
    without a failing test of its own (so CI always sees why the run failed)."""
    cases: list[_El] = []
    for step in steps_of(summary):
        sid, status = str(step["id"]), str(step.get("status"))
        tests = [t for t in step.get("acceptance_tests") or [] if isinstance(t, Mapping)]
        for t in tests:
            case = _El("testcase", classname=_xml(sid), name=_xml(t.get("command", "")),
                       time=_secs(t.get("duration_s")))
            t_status = str(t.get("status"))
            if t_status in ("failed", "timed_out"):
                message = ("timed out" if t_status == "timed_out"
                           else f"exit code {t.get('exit_code')}")
                case.add("failure", _xml(t.get("output_tail") or ""), message=message, type=t_status)
            elif t_status != "passed":
                reason = "cancelled" if t_status == "cancelled" else f"not run: step {status.replace('_', ' ')}"
                case.add("skipped", message=reason)
            cases.append(case)
        if status == "succeeded" or any(t.get("status") in ("failed", "timed_out") for t in tests):
            continue
        case = _El("testcase", classname=_xml(sid), name="(step)", time=_secs(step.get("duration_s")))
        error = _xml(step.get("error") or "")
        if status in ("failed", "timed_out"):
            case.add("failure", error, message=error.split("\n")[0] or status, type=status)
        else:
            by = step.get("blocked_by") or []
            reason = (f"blocked by {', '.join(map(str, by))}" if status == "blocked" and by
                      else error.split("\n")[0] or ("not started: run interrupted" if status == "pending"
                                                     else status))
            case.add("skipped", message=_xml(reason))
        cases.append(case)

    failures = sum(1 for c in cases if c.has("failure"))
    skipped = sum(1 for c in cases if c.has("skipped"))
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    wall = _secs((summary.get("summary") or {}).get("wall_time_s"))
    root = _El("testsuites", name="orchestrator", time=wall, **counts)
    suite = root.add("testsuite", name=_xml(summary.get("workstream_id", "")), time=wall,
                     timestamp=_timestamp(summary.get("started_at")), **counts)
    properties = suite.add("properties")
    for key in ("run_id", "status", "started_at", "finished_at"):
        properties.add("property", name=key, value=_xml(summary.get(key) or ""))
    suite.children.extend(cases)
    out: list[str] = []
    root.write(out)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "".join(out) + "\n"
