"""Unit tests of the pure renderers: status view, dry-run plan, markdown report, JUnit XML, schema."""
from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from orchestrator import report
from orchestrator.report import (critical_path, human_bytes, human_duration, iso, max_concurrency,
                                 plain_line, progress_line, recommendations, render_junit, render_report)
from orchestrator.status_view import render_plan, render_status

pytestmark = pytest.mark.timeout(30)

RUN_ID = "20261125_143022_abc12345"
WS_ID = "ws-example-02-parallel-execution"


# --- factories -----------------------------------------------------------------------------------

def make_step(sid: str, status: str = "succeeded", *, start: float | None = 0.0, duration: float | None = 1.0,
              deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """One step of a summary; `start=None` means it never started (no times at all)."""
    ran = start is not None and status not in ("pending", "blocked", "skipped")
    end = start + duration if ran and duration is not None else None
    step = {
        "id": sid, "status": status, "description": "", "depends_on": list(deps),
        "attempts": 1 if ran else 0, "exit_code": (0 if status == "succeeded" else 1) if ran else None,
        "error": None if status == "succeeded" else f"{sid} {status}",
        "started_at": iso(1_795_000_000 + start) if ran else None,
        "finished_at": iso(1_795_000_000 + end) if end is not None else None,
        "start_offset_s": start if ran else None, "end_offset_s": end,
        "duration_s": duration if ran else None, "timeout_s": 300,
        "log_file": f"steps/{sid}.log", "blocked_by": [], "outputs": {}, "acceptance_tests": [],
        "peak_rss_bytes": 12_900_000 if ran else None, "cpu_time_s": 0.5 if ran else None,
        "worker": "local:4242" if ran else None,
    }
    step.update(extra)
    return step


def make_summary(steps: list[dict[str, Any]], *, wall: float | None = None, status: str | None = None,
                 **execution: Any) -> dict[str, Any]:
    """A results_summary dict whose counts and times follow from `steps`."""
    ends = [s["end_offset_s"] for s in steps if s["end_offset_s"] is not None]
    wall = max(ends, default=0.0) if wall is None else wall
    sequential = sum(s["duration_s"] or 0.0 for s in steps)
    counts = {k: sum(1 for s in steps if s["status"] == k)
              for k in ("succeeded", "failed", "timed_out", "blocked", "skipped", "cancelled", "pending")}
    if status is None:
        status = "interrupted" if counts["pending"] else "succeeded" if counts["succeeded"] == len(steps) else "failed"
    return {
        "schema_version": 1, "workstream_id": WS_ID, "run_id": RUN_ID, "title": "Parallel example",
        "status": status, "started_at": iso(1_795_000_000), "finished_at": iso(1_795_000_000 + wall),
        "execution": {"parallel": True, "max_workers": 4, "on_failure": "continue", "timeout_per_step": 300,
                      "rate_limit_delay": 0, "rate_limit": None, "run_timeout": None, "executor": "process",
                      "adaptive_scaling": False, "scheduler_address": None, "circuit_breaker": None,
                      "max_log_bytes": 50 * 1024 * 1024, **execution},
        "steps": steps,
        "summary": {"total": len(steps), **counts, "wall_time_s": wall, "sequential_time_s": sequential,
                    "speedup": sequential / wall if wall else 0.0,
                    "success_rate": counts["succeeded"] / len(steps) if steps else 0.0,
                    "max_concurrency": max_concurrency(steps)},
    }


def diamond() -> dict[str, Any]:
    """a -> (b, c) -> d, all succeeded; b and c overlap."""
    return make_summary([make_step("a", start=0.0, duration=1.0),
                         make_step("b", start=1.0, duration=2.5, deps=("a",)),
                         make_step("c", start=1.0, duration=1.0, deps=("a",)),
                         make_step("d", start=3.5, duration=0.5, deps=("b", "c"))])


def make_state(steps: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    base = {"status": "pending", "depends_on": [], "attempt": 0, "started_at": None, "finished_at": None,
            "duration_s": None, "task_index": None, "task_count": None, "error": None, "exit_code": None,
            "blocked_by": [], "worker": None}
    return {"schema_version": 1, "workstream_id": WS_ID, "run_id": RUN_ID, "title": "", "status": "running",
            "pid": 4242, "started_at": "2026-11-25T14:30:22.123Z", "updated_at": "2026-11-25T14:30:30.000Z",
            "finished_at": None, "steps": {sid: {**base, **info} for sid, info in steps.items()}, **top}


def spec_example_state() -> dict[str, Any]:
    return make_state({
        "step-01-math-utils": {"status": "succeeded", "attempt": 1, "duration_s": 2.1},
        "step-02-string-utils": {"status": "running", "attempt": 1, "depends_on": ["step-01-math-utils"],
                                 "started_at": "2026-11-25T14:30:24.300Z", "task_index": 2, "task_count": 3},
        "step-03-file-utils": {"status": "failed", "attempt": 1, "error": "exit code 1 in task 2", "exit_code": 1},
        "step-04-docs": {"depends_on": ["step-01-math-utils", "step-02-string-utils"]},
        "step-05": {"status": "blocked", "depends_on": ["step-03-file-utils"], "blocked_by": ["step-03"]},
    })


SPEC_EXAMPLE = """\
Run ID: 20261125_143022_abc12345
Workstream: ws-example-02-parallel-execution
Status: running
Started: 2026-11-25T14:30:22Z

Completed:
  ✓ step-01-math-utils (2.1s)
Running:
  ● step-02-string-utils [task 2/3]
Pending:
  ○ step-04-docs (waiting for: step-02-string-utils)
Blocked:
  ⊘ step-05 (failed dependency: step-03)
Failed:
  ✗ step-03-file-utils
    Error: exit code 1 in task 2
---
Progress: 1/5 steps complete"""


# --- status view ---------------------------------------------------------------------------------

def test_status_matches_the_spec_example_exactly():
    assert render_status(spec_example_state(), now_iso="2026-11-25T14:30:30Z") == SPEC_EXAMPLE


def test_status_stale_names_pid_and_resume_command():
    text = render_status(spec_example_state(), stale=True)
    assert (f"Status: stale (orchestrator pid 4242 is gone; resume with: orchestrator run --ws-id {WS_ID} "
            f"--resume {RUN_ID})") in text.splitlines()


def test_status_other_states_and_only_non_empty_sections():
    state = make_state({
        "a": {"status": "running", "started_at": "2026-11-25T14:30:25.000Z", "task_index": 1, "task_count": 1},
        "b": {"status": "timed_out", "error": "timeout of 30s"},
        "c": {"status": "cancelled"},
        "d": {"status": "skipped", "error": "circuit open for tool aider"},
        "e": {},
    }, status="failed", finished_at="2026-11-25T14:31:00.500Z")
    text = render_status(state, now_iso="2026-11-25T14:30:28.200Z")
    lines = text.splitlines()
    assert "  ● a (running 3.2s)" in lines
    assert "  ✗ b (timed out)" in lines and "    Error: timeout of 30s" in lines
    assert "  ✗ c (cancelled)" in lines
    assert "Skipped:" in lines and "  – d (circuit open for tool aider)" in lines
    assert "  ○ e" in lines                      # no dependencies: no parenthesis
    assert "Finished: 2026-11-25T14:31:00Z" in lines
    assert "Completed:" not in lines and "Blocked:" not in lines
    assert lines[-1] == "Progress: 0/5 steps complete"


def test_status_of_an_empty_state_does_not_crash():
    assert render_status(make_state({})).splitlines()[-2:] == ["---", "Progress: 0/0 steps complete"]


# --- plan ----------------------------------------------------------------------------------------

def test_plan_lists_steps_in_start_order_waves_and_critical_path():
    # one list per field, rows not in start order (the renderer sorts them by start, then wave)
    plan = {"workstream_id": "ws", "max_workers": 2,
            "steps": {"id": ["d", "a", "b", "c"], "depends_on": [["b", "c"], [], ["a"], ["a"]],
                      "wave": [3, 1, 2, 2], "start": [3.0, 0.0, 2.0, 2.0], "priority": [0, 1, 0, 0],
                      "remaining_path": [1.0, 6.0, 4.0, 2.0],
                      "estimated_duration": [1.0, 2.0, 3.0, 1.0]},
            "waves": [["a"], ["b", "c"], ["d"]], "critical_path": ["a", "b", "d"],
            "critical_path_s": 6.0, "estimated_makespan_s": 6.0}
    text = render_plan(plan)
    lines = text.splitlines()
    table_ids = [line.split()[0] for line in lines if re.match(r"^[abcd]\s", line)]
    assert table_ids == ["a", "b", "c", "d"]
    assert re.search(r"^b\s+2\s+\+2\.0s\s+3\.0s\s+0\s+4\.0s\s+a$", text, re.M)
    assert re.search(r"^a\s+1\s+\+0\.0s\s+2\.0s\s+1\s+6\.0s\s+-$", text, re.M)
    assert ["wave 1: a", "wave 2: b, c", "wave 3: d"] == [l for l in lines if l.startswith("wave ")]
    assert "Critical path: a -> b -> d (6.0s)" in lines
    assert "Estimated makespan: 6.0s" in lines
    assert report.render_plan is render_plan                    # also importable from report
    from orchestrator.report import render_status as from_report
    assert from_report is render_status


# --- markdown report -----------------------------------------------------------------------------

def _block(text: str, kind: str) -> str:
    match = re.search(r"```mermaid\n" + kind + r"\n(.*?)\n```", text, re.S)
    assert match, f"no {kind} block"
    return match.group(1)


def test_gantt_bars_sit_at_the_real_offsets():
    summary = diamond()
    summary["steps"][2].update(status="failed", error="boom")
    text = render_report(summary, log_tails={})
    bars = re.findall(r"^\s+(\S+) :(\w+), s(\d+), (\d+), (\d+)$", _block(text, "gantt"), re.M)
    assert [b[0] for b in bars] == ["a", "b", "c", "d"]
    for label, tag, idx, start_ms, end_ms in bars:
        step = summary["steps"][int(idx)]
        assert step["id"] == label
        assert int(start_ms) == round(step["start_offset_s"] * 1000)
        assert int(end_ms) == round(step["end_offset_s"] * 1000)
        assert tag == {"succeeded": "done", "failed": "crit"}[step["status"]]
    assert "dateFormat x" in text


def test_gantt_has_no_bar_for_unstarted_steps_and_safe_labels():
    steps = [make_step("a", start=0.25, duration=1.0), make_step("b", "blocked", deps=("a",)),
             make_step("title", start=1.0, duration=1.0)]
    steps[0]["id"] = "weird:id#x;y"
    text = render_report(make_summary(steps), log_tails={})
    gantt = _block(text, "gantt")
    assert "    weird id x y :done, s0, 250, 1250" in gantt.splitlines()
    assert "s1," not in gantt
    assert "    step title :done, s2, 1000, 2000" in gantt.splitlines()


def test_flowchart_has_every_step_edges_and_status_classes():
    summary = make_summary([make_step("a", "failed"), make_step("b", "blocked", deps=("a",)),
                            make_step("c", start=0.0, duration=2.0), make_step("d", "skipped", deps=("c",))])
    flow = _block(render_report(summary, log_tails={}), "flowchart TD").splitlines()
    for i, sid in enumerate("abcd"):
        assert f'    s{i}["{sid}"]' in flow
    assert "    s0 --> s1" in flow and "    s2 --> s3" in flow
    assert any(l.startswith("    classDef succeeded fill:#d4edda") for l in flow)
    assert "    class s0 failed;" in flow and "    class s1 blocked;" in flow
    assert "    class s2 succeeded;" in flow and "    class s3 skipped;" in flow


def test_report_header_summary_and_time_saved_sentence():
    text = render_report(diamond(), log_tails={}, now_iso="2026-11-25T15:00:00Z")
    assert text.startswith(f"# Execution report: {WS_ID} — Parallel example\n")
    assert "- **Result:** ✅ succeeded" in text and f"`{RUN_ID}`" in text
    # sequential 5.0 s, wall 4.0 s: 20% saved, 1.25x
    assert ("Sequential execution would have taken 5.0 s; parallel execution took 4.0 s "
            "(20% time saved, 1.25× speedup).") in text
    assert re.search(r"^\| Speedup\s+\| 1\.25×\s+\|$", text, re.M)
    assert "12.3 MiB" in text                                    # peak memory in human units
    assert "_Report generated at 2026-11-25T15:00:00Z._" in text


def test_recommendations_for_idle_workers_and_timeout_use():
    summary = diamond()
    summary["execution"]["max_workers"] = 8
    summary["steps"][1]["timeout_s"] = 3.0                      # b ran 2.5 s of 3 s: 83%
    advice = recommendations(summary)
    assert any("`max_workers` is 8 but at most 2 steps ever ran at once" in a for a in advice)
    assert any("`b` used 83% of its timeout (3 s)" in a for a in advice)
    assert any(a.startswith("Critical path: `a` → `b` → `d` took 4.0 s, 100% of the wall time") for a in advice)
    assert not any("flaky" in a or a.startswith("The rate limit") for a in advice)
    summary["execution"]["max_workers"] = 2
    assert not any("max_workers" in a for a in recommendations(summary))


def test_concurrency_comes_from_offsets_not_only_the_summary():
    summary = diamond()
    summary["summary"]["max_concurrency"] = 0                    # a lying summary
    summary["execution"]["max_workers"] = 8
    assert max_concurrency(summary["steps"]) == 2
    assert any("at most 2 steps" in a for a in recommendations(summary))


def test_rate_limit_flaky_and_blocking_recommendations():
    steps = [make_step("a", start=0.0, duration=5.0), make_step("b", start=1.0, duration=5.0),
             make_step("c", start=2.0, duration=5.0), make_step("d", start=7.0, duration=1.0, deps=("a",)),
             make_step("e", "failed", start=9.0, duration=1.0, deps=("d",)),
             make_step("f", "blocked", deps=("e",)), make_step("g", "blocked", deps=("f",))]
    steps[3]["attempts"] = 3
    summary = make_summary(steps, rate_limit_delay=1.0)
    advice = recommendations(summary)
    rate = [a for a in advice if a.startswith("The rate limit")]
    # b and c were ready at 0 and started exactly 1 s after the previous start; d was not held back
    assert rate == ["The rate limit (one start every 1 s) held back `b`, `c`: they waited 2.0 s in total "
                    "for their start."]
    assert "`d` succeeded only on attempt 3: it may be flaky." in advice
    assert "`e` failed and blocked 2 other steps (`f`, `g`): fix it first." in advice


def test_steps_kept_from_an_earlier_session_get_no_bar_and_no_weight():
    summary = diamond()
    kept = make_step("old", start=-120.0, duration=100.0, kept_from_earlier_session=True)
    summary["steps"].insert(0, kept)
    summary["steps"][2]["depends_on"] = ["a", "old"]            # b
    text = render_report(summary, log_tails={})
    assert [b[0] for b in re.findall(r"^\s+(\S+) :\w+, s\d+", _block(text, "gantt"), re.M)] == ["a", "b", "c", "d"]
    assert "✓ succeeded (kept from an earlier session)" in text
    assert critical_path(summary["steps"]) == (["a", "b", "d"], 4.0)
    assert max_concurrency(summary["steps"]) == 2
    assert jsonschema.Draft202012Validator(_schema()).is_valid(summary)


def test_no_timeout_advice_for_retried_steps():
    summary = diamond()
    summary["steps"][1].update(timeout_s=3.0, attempts=2)      # 2.5 s over two attempts
    assert not any("timeout" in a for a in recommendations(summary))


def test_critical_path_uses_real_durations_and_survives_long_chains():
    assert critical_path(diamond()["steps"]) == (["a", "b", "d"], 4.0)
    chain = [make_step(f"s{i}", start=float(i), duration=1.0, deps=(f"s{i - 1}",) if i else ())
             for i in range(3000)]
    path, length = critical_path(chain)
    assert len(path) == 3000 and length == 3000.0


def test_failures_show_error_and_log_tail_in_an_unbreakable_fence():
    summary = make_summary([make_step("a", "failed", error="exit code 2 in task 1"),
                            make_step("b", "timed_out", start=0.0, duration=30.0)])
    log = "\n".join(f"line {i}" for i in range(30)) + "\n```\n# not a heading\n````\n\x1b[31mred\x1b[0m"
    text = render_report(summary, log_tails={"a": log})
    section = text.split("## Failures", 1)[1]
    assert "### `a` — failed (exit code 1)" in section and "**Error:** exit code 2 in task 1" in section
    fence = re.search(r"^(`{5,})text$", section, re.M)
    assert fence, "a log with ```` inside needs a longer fence"
    body = section.split(fence.group(0) + "\n", 1)[1].split("\n" + fence.group(1) + "\n", 1)[0]
    assert body.splitlines()[0] == "line 14" and len(body.splitlines()) == 20
    assert body.splitlines()[-1] == "red"
    assert "_No output in `steps/b.log`._" in section


def test_error_cells_are_truncated_and_pipes_escaped():
    summary = make_summary([make_step("a", "failed", error="x|y " + "z" * 200)])
    row = next(l for l in render_report(summary, log_tails={}).splitlines() if l.startswith("| `a`"))
    assert "x\\|y" in row and "…" in row and "z" * 80 not in row


def test_report_of_an_interrupted_run_with_pending_steps():
    steps = [make_step("a", start=0.0, duration=1.0), make_step("b", "cancelled", start=1.0, duration=0.5),
             make_step("c", "pending", deps=("b",)), make_step("d", "pending")]
    summary = make_summary(steps)
    assert summary["status"] == "interrupted"
    text = render_report(summary, log_tails={"b": "interrupted by SIGINT"})
    assert "- **Result:** ⚠️ interrupted" in text
    assert "## Not started" in text and "- `c`" in text and "- `d`" in text
    assert re.search(r"^\| Pending\s+\| 2\s+\|$", text, re.M)
    assert len(re.findall(r":\w+, s\d+, ", text)) == 2
    assert "`max_workers`" not in text                          # an interrupted run says nothing of the pool


@pytest.mark.parametrize("steps", [
    [],
    [make_step("a", "pending"), make_step("b", "pending", deps=("a",))],
    [make_step("a", "blocked"), make_step("b", "skipped")],
], ids=["no-steps", "none-started", "blocked-skipped"])
def test_report_does_not_crash_when_nothing_ran(steps):
    summary = make_summary(steps, wall=0.0)
    text = render_report(summary, log_tails={})
    assert "_No step started._" in text
    assert "No step time was recorded" in text
    render_junit(summary)


def test_blocked_and_skipped_list_their_reasons():
    summary = make_summary([make_step("a", "failed"), make_step("b", "blocked", deps=("a",), blocked_by=["a"]),
                            make_step("c", "skipped", error="run timeout reached")])
    text = render_report(summary, log_tails={})
    assert "- `b` — blocked by `a`" in text
    assert "- `c` — skipped: run timeout reached" in text


def test_acceptance_tests_table():
    tests = [{"command": "pytest -q | tee out", "status": "passed", "exit_code": 0, "duration_s": 1.5},
             {"command": "ruff check", "status": "failed", "exit_code": 1, "duration_s": 0.2}]
    text = render_report(make_summary([make_step("a", "failed", acceptance_tests=tests)]), log_tails={})
    assert "## Acceptance tests" in text
    assert re.search(r"^\| `a`\s+\| `pytest -q \\\| tee out`\s+\| ✓ passed\s+\| 0\s+\| 1\.5s\s+\|$", text, re.M)


# --- JUnit ---------------------------------------------------------------------------------------

def test_junit_counts_and_content():
    tests_a = [{"command": "pytest -q", "status": "passed", "exit_code": 0, "duration_s": 1.5, "output_tail": ""},
               {"command": "ruff <check> & \"x\"", "status": "failed", "exit_code": 1, "duration_s": 0.2,
                "output_tail": "E501 line too long\x00\x1b[0m"},
               {"command": "mypy", "status": "not_run", "exit_code": None, "duration_s": 0.0}]
    tests_b = [{"command": "slow", "status": "timed_out", "exit_code": None, "duration_s": 30.0}]
    tests_c = [{"command": "never", "status": "not_run", "exit_code": None, "duration_s": 0.0}]
    steps = [make_step("a", "failed", acceptance_tests=tests_a),
             make_step("b", "timed_out", acceptance_tests=tests_b),
             make_step("c", "failed", acceptance_tests=tests_c, error="exit code 3 in task 1"),  # tasks failed
             make_step("d", "failed", error="exit code 1 in task 2"),
             make_step("e", "blocked", deps=("d",), blocked_by=["d"]),
             make_step("f", start=0.0, duration=1.0)]
    xml = render_junit(make_summary(steps))
    root = ET.fromstring(xml.encode())
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == WS_ID and suite.get("timestamp") == "2026-11-18T11:06:40"
    cases = suite.findall("testcase")
    # a: 3 tests; b: 1; c: 1 test + (step); d: (step); e: (step); f: nothing
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("a", "pytest -q"), ("a", 'ruff <check> & "x"'), ("a", "mypy"), ("b", "slow"),
        ("c", "never"), ("c", "(step)"), ("d", "(step)"), ("e", "(step)")]
    counts = tuple(suite.get(k) for k in ("tests", "failures", "skipped", "errors"))
    assert counts == ("8", "4", "3", "0")
    assert root.get("tests") == "8" and root.get("failures") == "4"
    failure = cases[1].find("failure")
    assert failure.get("type") == "failed" and failure.get("message") == "exit code 1"
    assert failure.text == "E501 line too long"                  # NUL and colour codes stripped
    assert cases[3].find("failure").get("type") == "timed_out"
    assert cases[6].find("failure").get("message") == "exit code 1 in task 2"
    assert cases[7].find("skipped").get("message") == "blocked by d"
    assert cases[0].get("time") == "1.500"


# --- schema --------------------------------------------------------------------------------------

def _schema() -> dict[str, Any]:
    return json.loads((files("orchestrator") / "schemas" / "results_summary.schema.json").read_text("utf-8"))


def _realistic() -> dict[str, Any]:
    tests = [{"command": "pytest", "status": "failed", "exit_code": 1, "duration_s": 0.4, "output_tail": "1 failed"}]
    steps = [make_step("step-01", start=0.0, duration=2.0, outputs={"version": "1.2"}),
             make_step("step-02", "failed", start=0.1, duration=1.0, acceptance_tests=tests),
             make_step("step-03", "blocked", deps=("step-02",), blocked_by=["step-02"]),
             make_step("step-04", "pending")]
    summary = make_summary(steps, status="interrupted", circuit_breaker={"failure_threshold": 3})
    summary["future_key"] = {"anything": True}                  # forward compatible
    summary["steps"][0]["future_field"] = 1
    return summary


def test_a_realistic_summary_validates():
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["$id"] and schema["title"]
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(_realistic()))
    assert errors == []


@pytest.mark.parametrize("path, value", [
    (("status",), "running"),
    (("schema_version",), 2),
    (("run_id",), "latest"),
    (("started_at",), "yesterday"),
    (("steps", 0, "status"), "done"),
    (("steps", 0, "attempts"), "1"),
    (("steps", 1, "acceptance_tests", 0, "status"), "ok"),
    (("execution", "max_workers"), 0),
    (("summary", "success_rate"), 1.5),
])
def test_an_invalid_summary_does_not_validate(path, value):
    summary = _realistic()
    target: Any = summary
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(jsonschema.Draft202012Validator(_schema()).iter_errors(summary))


@pytest.mark.parametrize("missing", ["run_id", "summary", "steps"])
def test_a_summary_missing_a_required_key_does_not_validate(missing):
    summary = _realistic()
    del summary[missing]
    assert not jsonschema.Draft202012Validator(_schema()).is_valid(summary)


def test_every_schema_property_has_a_description():
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                assert "description" in prop, f"{where}.{name} has no description"
            for key, child in node.items():
                walk(child, f"{where}.{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{where}[{i}]")
    walk(_schema(), "$")


# --- helpers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (0, "0.0s"), (2.14, "2.1s"), (59.94, "59.9s"), (59.96, "1m 00s"), (185, "3m 05s"),
    (3599.6, "1h 00m"), (3720, "1h 02m"), (None, "-"), (-1, "0.0s"),
])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (12_900_000, "12.3 MiB"), (3 * 1024**3, "3.0 GiB"), (None, "-"),
])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_iso_plain_line_and_progress_line():
    assert iso(1_795_000_000.123) == "2026-11-18T11:06:40.123Z"
    assert iso(1_795_000_000.9996) == "2026-11-18T11:06:41.000Z"
    ts = 1_795_000_000.0
    clock = time.strftime("%H:%M:%S", time.localtime(ts))
    assert plain_line(ts, "✓", "step-01", "(2.1s)") == f"[{clock}] ✓ step-01 (2.1s)"
    assert plain_line(ts, "●", "step-02") == f"[{clock}] ● step-02"
    assert progress_line(3, 10) == "Progress: 3/10 steps complete"


@pytest.mark.parametrize("steps", [
    [],
    [make_step("a", "failed", acceptance_tests=[
        {"command": "t <1> & \"q\"\r\n\ttab", "status": "failed", "exit_code": 2, "duration_s": 0.5,
         "output_tail": "line 1\nline <2> & \"3\"\n  indented\n"},   # (a parser drops \r in text)
        {"command": "ok", "status": "passed", "exit_code": 0, "duration_s": 0.1},
        {"command": "later", "status": "cancelled", "exit_code": None, "duration_s": 0.0}])],
    [make_step("a", "failed", error="exit code 1 in task 2: `x > y`\nmore"),
     make_step("b", "blocked", deps=("a",), blocked_by=["a"]), make_step("c", "pending"),
     make_step("d", "skipped", error="run timeout"), make_step("e", start=0.0, duration=1.0)],
], ids=["empty", "tests", "steps"])
def test_junit_is_written_byte_for_byte_as_elementtree_writes_it(steps):
    xml = render_junit(make_summary(steps))
    root = ET.fromstring(xml.encode())
    ET.indent(root)
    assert xml == '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


CELL_TEXTS = ["", "build", "a b", "a  b", " lead", "trail ", "a|b", "a<b>c", "back\\slash", "tab\there",
              "new\nline", "é ☃ ok", "\x1b[31mred\x1b[0m", "back`tick", "``", "nb\u00a0sp", "x" * 100,
              "sep\u2028x", "unit\x1fsep", 42, None]


def _cell_the_long_way(text, limit=None):
    flat = " ".join(report.clean(text).split())
    if limit and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


@pytest.mark.parametrize("text", CELL_TEXTS, ids=repr)
def test_cells_and_code_spans_skip_no_step_that_would_change_the_text(text):
    # plain text is returned as it is: the same as cleaning, collapsing, truncating and escaping it
    for limit in (None, 80):
        assert report._md_cell(text, limit) == _cell_the_long_way(text, limit)
    flat = " ".join(report.clean(text).split()).replace("|", "\\|")
    if "`" not in flat:
        assert report._code(text) == f"`{flat}`"
    else:
        assert flat in report._code(text) and report._code(text).startswith("``")


@pytest.mark.parametrize("started, stamp", [
    ("2026-11-18T11:06:40.123Z", "2026-11-18T11:06:40"),         # ours: read as it is
    ("2026-11-18T13:06:40+02:00", "2026-11-18T11:06:40"),        # an offset: turned to UTC
    ("2026-11-18T11:06:40", "2026-11-18T11:06:40"),              # naive: UTC
    ("yesterday", ""), (None, ""), (12, "")])
def test_the_junit_timestamp_is_the_start_in_utc_whatever_its_spelling(started, stamp):
    summary = make_summary([make_step("a")])
    summary["started_at"] = started
    (suite,) = ET.fromstring(render_junit(summary).encode()).findall("testsuite")
    assert suite.get("timestamp") == stamp


@pytest.mark.parametrize("text", ["s001", "a b", "a  b", " x", "title", "title x", "gantt", "x:y",
                                  "a#b", "c;d", "", ":", "é☃", "\x1b[1mz", "tab\tx", "clicker"], ids=repr)
def test_a_plain_gantt_label_is_the_text_itself_and_others_are_cleaned(text):
    label = re.sub(r"[:#;]", " ", report.clean(text)).strip() or "step"
    if label.split()[0] in ("title", "section", "dateFormat", "axisFormat", "excludes", "includes",
                            "todayMarker", "tickInterval", "weekday", "click", "gantt"):
        label = "step " + label
    assert report._mermaid_label(text) == " ".join(label.split())


def test_the_step_table_makes_each_status_and_worker_cell_once_and_the_same():
    """Cells a run repeats (statuses, workers) are made once per table: the table is the one made
    cell by cell, whatever the values (a status that reads like a worker, escapes, non-strings)."""
    pairs = [("succeeded", "local"), ("failed", "local"), ("succeeded", "succeeded"),
             ("timed_out", "host|1 <b>"), (None, None), ("running", "local"), (3, 7), ("succeeded", "local")]
    steps = [{"id": f"s{i}", "status": status, "worker": worker} for i, (status, worker) in enumerate(pairs)]
    steps[1]["kept_from_earlier_session"] = True
    rows = report._step_table(steps)[2:]
    for s, row in zip(steps, rows):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        status = report._status_cell(s["status"])
        if s.get("kept_from_earlier_session"):
            status += " (kept from an earlier session)"
        assert (cells[1], cells[7]) == (status, report._md_cell(s["worker"] or "-")), row
