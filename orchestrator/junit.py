"""`junit.xml`: a run's acceptance tests as JUnit XML for CI, plus a `(step)` case for each step that did
not succeed without a failing test of its own (so CI always shows why the run failed). A pure function
of the `results_summary.json` dict; ElementTree is imported when the file is written, at a run's end.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timezone

from .analysis import steps_of
from .fmt import ANSI, number, parse_iso

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# what XML 1.0 does not allow, as a positive class (the negated one over all of Unicode takes 5 ms to
# compile, at every run's end)
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: Any) -> str:
    return _XML_ILLEGAL.sub("", ANSI.sub("", str(text)))


def _secs(value: Any) -> str:
    return f"{max(0.0, number(value) or 0.0):.3f}"


def render_junit(summary: Mapping[str, Any]) -> str:
    """JUnit XML: a testcase per acceptance test, plus `(step)` for a step that did not succeed
    without a failing test of its own (so CI always sees why the run failed)."""
    import xml.etree.ElementTree as ET   # 5 ms of import, needed once at the end of a run
    cases: list[ET.Element] = []
    for step in steps_of(summary):
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
