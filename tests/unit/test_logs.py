"""A step's log and orchestrator.log: lines made only when written, lines of one loop pass in one write."""
import json
import os

from orchestrator.attempt import LogSink
from orchestrator.records import StateJson, StepRecord
from orchestrator.model import StepStatus
from orchestrator.store import RunStore


class _Line:
    """A note given as a function: counts the times it was made."""

    def __init__(self, text: str):
        self.text, self.calls = text, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.text


def test_a_silent_success_never_makes_its_notes_nor_its_file(tmp_path):
    path = tmp_path / "s.log"
    sink, line = LogSink(str(path), 1 << 20, (), append=False), _Line("=== s attempt 1 started ===")
    sink.note(line)
    sink.close(keep=False)
    assert line.calls == 0 and not path.exists()


def test_notes_made_late_come_first_and_once_when_the_step_prints(tmp_path):
    path = tmp_path / "s.log"
    sink = LogSink(str(path), 1 << 20, ("hunter2",), append=False)
    first, later = _Line("=== s attempt 1 started ==="), _Line("=== s attempt 1 failed: hunter2 ===")
    sink.note(first)
    sink.note("--- task 1/1: make")
    sink.write(b"out\n")
    sink.note(later)             # the file is open: made at once
    sink.close(keep=True)
    assert (first.calls, later.calls) == (1, 1)
    assert path.read_text() == ("=== s attempt 1 started ===\n--- task 1/1: make\nout\n"
                                "=== s attempt 1 failed: *** ===\n")


def test_a_failure_without_output_still_gets_its_notes(tmp_path):
    path = tmp_path / "s.log"
    sink, line = LogSink(str(path), 1 << 20, (), append=False), _Line("=== s attempt 1 failed ===")
    sink.note(line)
    sink.close(keep=True)
    assert path.read_text() == "=== s attempt 1 failed ===\n" and line.calls == 1


def _log_lines(store: RunStore) -> list[str]:
    with open(os.path.join(store.ws_dir, "orchestrator.log")) as f:
        return [line.split(" ", 1)[1].rstrip("\n") for line in f]


def test_held_lines_are_written_together_in_order_on_release(tmp_path):
    store = RunStore(tmp_path, "ws")
    store.log("RUN START")
    store.hold_log()
    store.log("STEP END a")
    store.log("STEP START b")
    assert _log_lines(store) == ["RUN START"]         # held back until released
    store.release_log()
    store.log("STEP END b")                            # no longer held
    assert _log_lines(store) == ["RUN START", "STEP END a", "STEP START b", "STEP END b"]
    store.close()


def test_closing_the_store_writes_what_is_still_held(tmp_path):
    store = RunStore(tmp_path, "ws")
    store.log("RUN START")
    store.hold_log()
    store.log("RUN END")
    store.close()
    assert _log_lines(store) == ["RUN START", "RUN END"]


def test_beginning_an_attempt_sets_its_fields_and_reports_the_change():
    rec = StepRecord("s", (), 30.0)
    rec.task_index, rec.task_count = 2, 3
    state = StateJson({"s": rec}, ())
    state.encode(["s"])
    rec.begin_attempt(2)
    assert (rec.attempts, rec.status, rec.task_index, rec.task_count) == (2, StepStatus.RUNNING, None, None)
    text = state.text(ws=_Ws(), run_id="r", status="running", pid=1, started_at=1.0, updated_at=2.0,
                      finished_at=None, execution={})
    step = json.loads(text)["steps"]["s"]
    assert (step["status"], step["attempt"], step["task_index"], step["task_count"]) == ("running", 2, None, None)


class _Ws:
    id, title = "ws", "ws"
