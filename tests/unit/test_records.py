"""The live state's per-step encoding: the field-by-field writer must give the encoder's exact bytes."""
import json

import pytest

from orchestrator.model import StepResult, StepStatus
from orchestrator.model import TestResult as CheckResult   # not a test class for pytest
from orchestrator.records import StateJson, StepRecord, _compact


def _encoded(rec: StepRecord) -> str:
    return json.dumps(rec.step_id) + ":" + _compact(rec.state_dict())


def _pending():
    return StepRecord("build", (), 30.0, "compile it", "0123456789abcdef")


def _running():
    rec = StepRecord("b\u00e9\"x", ("a", "z\u2603"), 30.0)
    rec.status, rec.attempts, rec.started_at = StepStatus.RUNNING, 1, 1796167938.9214172
    rec.task_index, rec.task_count, rec.start_is_estimate = 1, 3, True
    return rec


def _ended(status: StepStatus, **extra):
    rec = StepRecord("s005", ("s004",), 1.5, "", "c843d0c9aabe7d0f")
    fields = dict(exit_code=0, started_at=1796167938.5, finished_at=1796167938.75, worker="local",
                  cpu_time_s=0.0)
    fields.update(extra)
    rec.absorb(StepResult("s005", 1, status, **fields))
    rec.status, rec.attempts = status, 1
    return rec


def _blocked():
    rec = StepRecord("d", ("a", "c"), 2.0)
    rec.status, rec.blocked_by, rec.error = StepStatus.BLOCKED, ["a", "c"], "dependency c failed"
    return rec


def _odd_numbers():
    rec = StepRecord("f", (), 2.0)
    rec.status, rec.exit_code, rec.peak_rss_bytes = StepStatus.FAILED, -9, 2 ** 40
    rec.cpu_time_s, rec.started_at, rec.finished_at = float("nan"), 1e9, 1e9 + 1e-7
    return rec


def _pending_again(**fields):
    """A pending record: as made (the template's entry), or with a field set (the general one)."""
    rec = StepRecord("p\u00e9nd", ("a", "b\"c"), 30.0, "", "ffff")
    for name, value in fields.items():
        setattr(rec, name, value)
    return rec


RECORDS = {
    "pending": _pending,
    "pending, non-ASCII id and quoted dependencies": _pending_again,
    "pending, no definition hash": lambda: StepRecord("x", (), 1.0),
    "pending after an earlier attempt": lambda: _pending_again(attempts=2, error="retrying"),
    "pending with a start": lambda: _pending_again(started_at=1796167938.5),
    "pending, blocked by": lambda: _pending_again(blocked_by=["a"]),
    "pending with a zero cpu time and exit code": lambda: _pending_again(cpu_time_s=0.0, exit_code=0),
    "running, non-ASCII id and dependencies": _running,
    "succeeded": lambda: _ended(StepStatus.SUCCEEDED),
    "failed with a quoted, multi-line error": lambda: _ended(
        StepStatus.FAILED, exit_code=3, error='boom "quoted"\n\t\u00fc \\ end', peak_rss_bytes=12345),
    "timed out without an exit code": lambda: _ended(StepStatus.TIMED_OUT, exit_code=None,
                                                     error="timed out (timeout of 1.5s)"),
    "blocked": _blocked,
    "odd numbers (NaN, huge, negative)": _odd_numbers,
    "outputs, a return value and tests": lambda: _ended(
        StepStatus.FAILED, outputs={"k": "v", "n": "1"}, return_value={"x": [1, 2.5, None, True]},
        acceptance_tests=(CheckResult("pytest -q", "failed", 1, 0.12345, "tail"),)),
    "a falsy return value": lambda: _ended(StepStatus.SUCCEEDED, return_value=0),
}


@pytest.mark.parametrize("make", RECORDS.values(), ids=RECORDS.keys())
def test_a_state_entry_is_the_encoders_bytes(make):
    rec = make()
    assert rec.state_entry(()) == _encoded(rec)
    json.loads("{" + rec.state_entry(()) + "}")   # and valid JSON


def test_secrets_are_masked_in_entries_and_the_whole_state_parses():
    rec = _ended(StepStatus.FAILED, error="token hunter2 refused")
    entry = rec.state_entry(("hunter2",))
    assert "hunter2" not in entry and "***" in entry
    records = {r.step_id: r for r in (_pending(), _running(), _blocked())}
    state = StateJson(records, ())
    text = state.text(ws=type("W", (), {"id": "w", "title": "t"})(), run_id="r", status="running",
                      pid=1, started_at=1.0, updated_at=2.0, finished_at=None, execution={})
    steps = json.loads(text)["steps"]
    assert list(steps) == list(records)
    assert steps["b\u00e9\"x"]["task_count"] == 3


def test_entries_encoded_early_are_encoded_again_when_their_step_changes():
    records = {r.step_id: r for r in (_pending(), _blocked())}
    live = StateJson(records, ())
    head = dict(ws=type("W", (), {"id": "w", "title": "t"})(), run_id="r", status="running", pid=1,
                started_at=1.0, updated_at=2.0, finished_at=None, execution={})

    def as_encoded_now():   # each entry encoded afresh, the order of the records kept
        return ",".join(_encoded(r) for r in records.values())

    live.text(**head)
    records["build"].status = StepStatus.SUCCEEDED
    live.encode(["build", "d"])                  # "d" did not change: left as it was
    assert live.text(**head).endswith(',"steps":{' + as_encoded_now() + "}}")
    records["build"].error = "changed after it was encoded early"
    assert live.text(**head).endswith(',"steps":{' + as_encoded_now() + "}}")
    assert json.loads(live.text(**head))["steps"]["build"]["error"].startswith("changed after")


def test_summary_entries_made_as_steps_end_are_the_ones_made_at_the_finish():
    from orchestrator.records import summary_dict
    from orchestrator.store import readable_item, readable_json

    records = {r.step_id: r for r in (_ended(StepStatus.SUCCEEDED), _blocked(), _pending(), _running())}
    live = StateJson(records, ())
    head = dict(ws=type("W", (), {"id": "w", "title": "t"})(), run_id="r", status="running", pid=1,
                started_at=1.0, updated_at=2.0, finished_at=None, execution={})
    live.text(**head)
    live.make(["s005", "d", "build"], 1796167938.0, lambda sid: f"steps/{sid}.log", readable_item)
    assert set(live.made) == {"s005", "d"}           # "build" has not ended: nothing made for it
    records["d"].blocked_by = ["a", "c", "e"]         # changed after its entry was made
    live.text(**head)                                 # (the final state comes first at the finish)
    assert set(live.made) == {"s005"}

    def summary(made):
        return summary_dict(ws=head["ws"], run_id="r", status="failed", started_at=1796167938.0,
                            finished_at=1796167940.0, execution={}, records=records,
                            log_file={sid: f"steps/{sid}.log" for sid in records}, made=made)

    fresh, reused = summary(None), summary(live.made)
    assert reused == fresh
    assert reused["steps"][0] is live.made["s005"]
    assert readable_json(reused, live.lines) == readable_json(fresh)
    assert [s["blocked_by"] for s in reused["steps"] if s["id"] == "d"] == [["a", "c", "e"]]


class _Odd:
    def __str__(self) -> str:
        return "odd"


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [1.5, None, True, "é☃\n\"", {"k": ()}], "c": _Odd()}, "plain", 3, 2.5, None, [], {},
    {"nan": float("nan"), "inf": float("inf")}, {"big": 10 ** 30, "small": 1e-7, 3: "int key"},
])
def test_the_encoders_made_once_write_what_json_writes(value):
    from orchestrator.fmt import json_encoder
    for options in ({"default": str, "ensure_ascii": False}, {"default": str, "separators": (",", ":")},
                    {"default": str, "sort_keys": True}):
        try:
            expected = json.JSONEncoder(**options).encode(value)
        except TypeError:   # sorting keys of mixed types
            with pytest.raises(TypeError):
                json_encoder(**options)(value)
        else:
            assert json_encoder(**options)(value) == expected
