"""`orchestrator.lean` and the checks written without a regex for it: each answers exactly as the
`json` call or regular expression it replaces, on generated input and on the edge cases."""
from __future__ import annotations

import copy
import json
import math
import pickle
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import lean, masking, report, schema, specs, store
from orchestrator.model import OnFailure, RunStatus, StepStatus

JSON_TEXTS = ["{}", " [1, 2.5, -3e2, true, null] ", '{"a": {"b": ["c"]}}\n', '"\\u00e9\\n"', "NaN",
              "[Infinity, -Infinity]", "1 2", "", "   ", "[1,]", '{"a" 1}', "\ufeff{}", '"\x01"',
              "[" * 5 + "]" * 4, "123abc", '{"a": 1, "a": 2}', "0", "-0.0", "1e400", "tru"]


def outcome(fn, *args, **kw):
    try:
        return ("ok", fn(*args, **kw))
    except Exception as e:  # noqa: BLE001 - the kind and text of the error are what is compared
        return (type(e).__name__, str(e))


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)) \
        or (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b)))


@pytest.mark.parametrize("text", JSON_TEXTS)
def test_loads_answers_as_json_loads(text):
    mine, theirs = outcome(lean.loads, text), outcome(json.loads, text)
    if theirs[0] == "ok":
        assert mine[0] == "ok" and same(mine[1], theirs[1]), (mine, theirs)
    else:                        # the same error, message and position included
        assert mine == theirs


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids), max_leaves=20),
       st.sampled_from([" ", "", "\n\t"]))
def test_loads_and_dumps_agree_with_json(value, pad):
    text = pad + json.dumps(value) + pad
    assert lean.loads(text) == json.loads(text)
    assert lean.dumps(value) == json.dumps(value)
    assert lean.dumps(value, separators=(",", ":")) == json.dumps(value, separators=(",", ":"))


def test_loads_passes_the_hooks_and_what_they_raise():
    class Refused(Exception):
        pass

    def refuse(text):
        raise Refused(text)

    pairs = lean.loads('{"a": [1.5, 2]}', object_pairs_hook=lambda p: ("pairs", p),
                       parse_float=lambda t: ("float", t), parse_int=lambda t: ("int", t))
    assert pairs == ("pairs", [("a", [("float", "1.5"), ("int", "2")])])
    with pytest.raises(Refused):
        lean.loads("[NaN]", parse_constant=refuse)


def test_decode_error_is_jsons_own():
    with pytest.raises(lean.decode_error()) as info:
        lean.loads('{"a": }')
    assert isinstance(info.value, json.JSONDecodeError) and (info.value.lineno, info.value.colno) == (1, 7)


def test_dumps_refuses_what_json_refuses():
    assert outcome(lean.dumps, {1j}) == outcome(json.dumps, {1j})
    assert lean.dumps(object(), default=lambda o: "x") == '"x"'


def test_pattern_compiles_on_first_use():
    p = lean.Pattern(r"(?i)a+b")
    assert p._rx is None
    assert p.search("xAAb").group() == "AAb" and p.sub("-", "ab ab") == "- -"
    assert p.compiled() is p.compiled()


# --- the checks written by hand --------------------------------------------------------------------

ID_ALPHABET = st.text(alphabet="abzAZ09._- \n\t/é", max_size=140)


@settings(max_examples=500, deadline=None)
@given(ID_ALPHABET)
def test_id_patterns_answer_as_the_regex(text):
    for pattern in (schema.ID_PATTERN, r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"):
        assert (schema.pattern_search(pattern)(text) is not None) == (re.search(pattern, text) is not None)
    assert schema.is_id(text) == (re.fullmatch(schema.ID_PATTERN[1:-1], text) is not None)
    assert schema.pattern_search(r"\$\{\s*env\.")("x ${ env.A}") is not None


@pytest.mark.parametrize("text", ["a" * 128, "a" * 129, "a" * 128 + "\n", "a\n", "a\n\n", "\n", "", "-a",
                                  "0.a_b-c", "A"])
def test_id_pattern_edges(text):
    assert (schema.pattern_search(schema.ID_PATTERN)(text) is not None) == \
        (re.search(schema.ID_PATTERN, text) is not None)


CELL_TEXT = st.text(alphabet="ab |<>`\\:#;\t\n\x1b\xa0é", max_size=12)


@settings(max_examples=500, deadline=None)
@given(CELL_TEXT)
def test_plain_cells_and_labels_answer_as_the_regex(text):
    cell = re.compile(r"[^\s\\|<>`]+(?: [^\s\\|<>`]+)*")
    label = re.compile(r"[^\s:#;]+(?: [^\s:#;]+)*")
    assert report._plain(text) == (text.isprintable() and cell.fullmatch(text) is not None)
    assert report._plain(text, report._LABEL_SPECIAL) == (text.isprintable() and label.fullmatch(text) is not None)
    assert report._mermaid_label(text) == _old_mermaid_label(text)


def _old_mermaid_label(text):
    if text.isprintable() and re.fullmatch(r"[^\s:#;]+(?: [^\s:#;]+)*", text) \
            and text.split(" ", 1)[0] not in report._GANTT_WORDS:
        return text
    label = re.sub(r"[:#;]", " ", report.clean(text)).strip() or "step"
    if label.split()[0] in report._GANTT_WORDS:
        label = "step " + label
    return " ".join(label.split())


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="aZ09_./:,+@%=- \t'\"$;é", max_size=12))
def test_plain_commands_answer_as_the_regex(text):
    assert specs._plain(text) == \
        (re.fullmatch(r"[A-Za-z0-9_./:,+@%=-]+(?: +[A-Za-z0-9_./:,+@%=-]+)*", text) is not None)


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "api_key", "MyPassword", "passwd", "credentials", "PATH",
                                  "HOME", "KEYBOARD", "to_ken", "Kelvin_\u212aEY", "pa\u017f\u017fword", ""])
def test_secret_names_answer_as_the_regex(name):
    assert masking.secret_name(name) == \
        (re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", name, re.I) is not None)


@pytest.mark.parametrize("name", ["20261125_143022_1a2b3c4d", "20261125_143022_1a2b3c4", "20261125-143022_1a2b3c4d",
                                  "20261125_143022_1A2B3C4D", "2026112x_143022_1a2b3c4d", "latest", "",
                                  "20261125_143022_1a2b3c4d0"])
def test_run_ids_answer_as_the_regex(name):
    assert store.is_run_id(name) == (re.fullmatch(r"\d{8}_\d{6}_[0-9a-f]{8}", name) is not None)


# --- the status enums without `enum` -----------------------------------------------------------------

def test_choices_behave_as_the_str_enums_they_replace():
    assert [s.value for s in StepStatus][:3] == ["pending", "running", "succeeded"] and len(StepStatus) == 8
    assert StepStatus("failed") is StepStatus.FAILED and StepStatus.FAILED == "failed"
    assert f"{StepStatus.FAILED}" == str(StepStatus.FAILED) == "failed" and StepStatus.FAILED.name == "FAILED"
    assert isinstance(StepStatus.FAILED, StepStatus) and not isinstance(OnFailure.CONTINUE, StepStatus)
    assert pickle.loads(pickle.dumps(StepStatus.BLOCKED)) is StepStatus.BLOCKED
    assert copy.deepcopy(RunStatus.FAILED) is RunStatus.FAILED and copy.copy(OnFailure.FAIL_ALL) is OnFailure.FAIL_ALL
    assert json.dumps([StepStatus.SKIPPED]) == '["skipped"]' and {StepStatus.RUNNING: 1}["running"] == 1
    assert [s.value for s in StepStatus if s.terminal] == ["succeeded", "failed", "timed_out", "blocked",
                                                          "skipped", "cancelled"]
    assert [s.value for s in StepStatus if s.bad] == ["failed", "timed_out", "blocked", "skipped", "cancelled"]
    with pytest.raises(ValueError, match="'nope' is not a valid StepStatus"):
        StepStatus("nope")
    with pytest.raises(ValueError):
        OnFailure(["continue"])
    with pytest.raises(AttributeError):
        StepStatus.FAILED = "x"


# --- threads, caches, cached attributes without threading and functools -----------------------------

def test_thread_runs_its_target_and_joins():
    import _thread
    started, release, seen = _thread.allocate_lock(), _thread.allocate_lock(), []
    started.acquire()
    release.acquire()

    def work(x):
        started.release()
        with release:       # held by the test until it has looked
            seen.append(x)

    t = lean.Thread(work, 7)
    with started:            # the target is running
        assert t.is_alive() and lean.others_running()
    release.release()
    t.join()
    assert seen == [7] and not t.is_alive()


def test_a_thread_counts_as_running_from_its_start():
    import _thread
    gate = _thread.allocate_lock()
    gate.acquire()
    t = lean.Thread(gate.acquire)            # blocks until released below
    assert lean.others_running()             # at once, before the new thread has run at all
    gate.release()
    t.join()


def test_memo_caches_by_arguments_and_stays_bounded():
    calls = []

    @lean.memo(2)
    def double(x):
        """Twice x."""
        calls.append(x)
        return 2 * x

    assert [double(1), double(1), double(2), double(1)] == [2, 2, 4, 2] and calls == [1, 2]
    double(3)                                # a third key: the full cache starts again
    double(1)
    assert calls == [1, 2, 3, 1] and double.__doc__ == "Twice x." and double.__wrapped__(5) == 10


def test_once_computes_on_first_access_only():
    class Box:
        made = 0

        @lean.once
        def value(self):
            Box.made += 1
            return [Box.made]

    b = Box()
    assert b.value is b.value and b.value == [1] and Box.made == 1 and isinstance(Box.value, lean.once)
    assert Box().value == [2]
