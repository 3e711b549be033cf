"""The live state's pace: a big state.json is written less often, in proportion to its size."""
import json
import os

import pytest

from orchestrator import journal
from orchestrator.journal import STATE_FLUSH_INTERVAL, STATE_FLUSH_MAX, RunJournal, flush_interval
from orchestrator.model import Execution, Step, Workstream
from orchestrator.scheduler import Scheduler
from orchestrator.store import RunStore

pytestmark = pytest.mark.timeout(30)


def _journal(tmp_path, n: int = 3) -> tuple[RunJournal, Scheduler]:
    steps = tuple(Step(f"s{i}", i, tasks=("true",)) for i in range(n))
    ws = Workstream("ws", steps, Execution(max_workers=2))
    j = RunJournal(ws, RunStore(str(tmp_path), "ws"), (), {"max_workers": 2}, wall=lambda: 1.0e9)
    j.open(None, False, print)
    return j, Scheduler(ws, max_workers=2)


def _state_size(j: RunJournal) -> int:
    return os.path.getsize(os.path.join(j.run_dir, "state.json")) - 1   # the text, without its "\n"


def test_the_interval_is_the_floor_for_a_usual_state_and_grows_with_a_big_one():
    assert flush_interval(0) == flush_interval(1_000_000) == STATE_FLUSH_INTERVAL   # 1 MB: ~2000 steps
    assert flush_interval(40_000_000) == pytest.approx(40_000_000 / journal.STATE_FLUSH_RATE)
    assert flush_interval(10 ** 12) == STATE_FLUSH_MAX


def test_a_small_run_is_written_every_interval(tmp_path):
    j, sched = _journal(tmp_path)
    j.flush(10.0, sched, force=True)
    assert j.next_flush() is None                      # nothing changed since
    j.dirty = True
    assert j.next_flush() == pytest.approx(10.0 + STATE_FLUSH_INTERVAL)


def test_a_big_state_waits_its_size_at_the_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "STATE_FLUSH_RATE", 1000.0)     # bytes a second: 3 steps are "big"
    j, sched = _journal(tmp_path)
    j.flush(10.0, sched, force=True)
    wait = _state_size(j) / 1000.0
    assert wait > STATE_FLUSH_INTERVAL
    j.dirty = True
    assert j.next_flush() == pytest.approx(10.0 + wait)
    before = json.loads(open(os.path.join(j.run_dir, "state.json")).read())["updated_at"]
    j.wall = lambda: 2.0e9
    j.flush(10.0 + wait * 0.9, sched)                  # too soon: not written
    j.store.settle()
    assert json.loads(open(os.path.join(j.run_dir, "state.json")).read())["updated_at"] == before
    j.flush(10.0 + wait * 1.01, sched)                 # due: written (from the writer thread)
    j.store.settle()
    assert json.loads(open(os.path.join(j.run_dir, "state.json")).read())["updated_at"] != before
    j.store.close()


def test_the_background_writer_leaves_each_file_with_its_newest_text(tmp_path):
    """The store's writer thread (on `_thread`): every file ends with the last text given for it,
    whole, and nothing of its temp files is left once it is closed."""
    from orchestrator.store import _Writer
    w = _Writer()
    paths = [str(tmp_path / f"f{k}.json") for k in range(3)]
    for i in range(300):
        w.put(paths[i % 3], json.dumps({"i": i, "pad": "x" * (i * 37 % 5000)}))
    w.close()
    assert [json.loads(open(p).read())["i"] for p in paths] == [297, 298, 299]
    assert sorted(os.listdir(tmp_path)) == ["f0.json", "f1.json", "f2.json"]
    assert not w._thread.is_alive()
