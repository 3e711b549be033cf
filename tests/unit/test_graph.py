"""The dependency graph: cycles, order, critical paths, glob overlap and scope conflicts."""
from __future__ import annotations

import itertools
import random
import re
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import graph
from orchestrator.graph import (Conflict, critical_path, dependents, find_cycle, glob_overlap,
                                normalize_glob, remaining_path, scope_conflicts, topological_order)
from orchestrator.model import Execution, FilesScope, Step, StepGroup, Workstream

pytestmark = pytest.mark.timeout(30)


# --- order and paths -----------------------------------------------------------------------------

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}


def test_dependents():
    assert dependents(DIAMOND) == {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": [], "e": []}


def test_topological_order_is_stable_by_file_order():
    assert topological_order(DIAMOND, ["a", "b", "c", "d", "e"]) == ["a", "b", "c", "d", "e"]
    assert topological_order(DIAMOND, ["e", "d", "c", "b", "a"]) == ["e", "a", "c", "b", "d"]
    # without an explicit order, the mapping's order breaks ties
    assert topological_order({"z": ["y"], "y": [], "x": []}) == ["y", "z", "x"]


def test_topological_order_refuses_a_cycle():
    with pytest.raises(ValueError, match="a -> b -> a"):
        topological_order({"a": ["b"], "b": ["a"]}, ["a", "b"])


@pytest.mark.parametrize("deps, expected", [
    (DIAMOND, None),
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
    ({"a": ["a"]}, ["a", "a"]),
    ({"x": [], "y": ["x", "z"], "z": ["w"], "w": ["y"]}, ["y", "z", "w", "y"]),
    ({}, None),
])
def test_find_cycle(deps, expected):
    assert find_cycle(deps) == expected


def test_find_cycle_is_iterative_on_deep_chains():
    n = 50_000
    deps = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}
    assert find_cycle(deps) is None
    deps["s0"] = [f"s{n - 1}"]
    cycle = find_cycle(deps)
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1]


def test_remaining_and_critical_path():
    durations = {"a": 2.0, "b": 5.0, "c": 1.0, "d": 3.0, "e": 4.0}
    rp = remaining_path(DIAMOND, list(DIAMOND), durations)
    assert rp == {"a": 10.0, "b": 8.0, "c": 4.0, "d": 3.0, "e": 4.0}
    assert critical_path(DIAMOND, list(DIAMOND), durations) == (["a", "b", "d"], 10.0)


def _reference_paths(deps, order, durations, default=1.0):
    """remaining_path and critical_path by their definitions, on small graphs."""
    names = list(dict.fromkeys([*order, *deps]))
    users = {n: [m for m in names if n in deps.get(m, ())] for n in names}
    rp: dict[str, float] = {}

    def left(n):
        if n not in rp:
            d = durations.get(n)
            rp[n] = (default if d is None else float(d)) + max([0.0, *(left(u) for u in users[n])])
        return rp[n]

    for n in names:
        left(n)
    path = [max(names, key=rp.__getitem__)] if names else []
    while path and users[path[-1]]:
        path.append(max(users[path[-1]], key=rp.__getitem__))
    return {n: rp[n] for n in names}, path


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_longest_paths_match_their_definition(data):
    # any listing order (the fast pass needs dependencies first), unknown and repeated
    # dependencies, zero and missing durations, ties
    n = data.draw(st.integers(0, 9))
    topo = [f"s{i}" for i in data.draw(st.permutations(range(n)))]
    deps = {s: data.draw(st.lists(st.sampled_from(topo[:k] + ["ghost"]), max_size=3)) if k else []
            for k, s in enumerate(topo)}
    listed = data.draw(st.permutations(topo))
    deps = {s: deps[s] for s in listed}
    durations = {s: data.draw(st.sampled_from([0.0, 1.0, 2.5, None])) for s in topo}
    rp, path = graph.longest_paths(deps, listed, durations)
    assert (rp, path) == _reference_paths(deps, listed, durations)
    assert list(rp) == listed
    assert critical_path(deps, listed, durations) == (path, rp[path[0]] if path else 0.0)


def test_step_links_over_file_positions():
    # listed dependents first: the file order is not topological, so topo() sorts (ties by position)
    links = graph.StepLinks(("d", "b", "c", "a"), [("b", "c"), ("a",), ("a",), ()])
    assert links.pos == {"d": 0, "b": 1, "c": 2, "a": 3}
    assert links.dependents == [[], [0], [0], [1, 2]]            # ascending positions
    assert not links.in_file_order and list(links.topo()) == [3, 1, 2, 0]
    rp, path = links.longest_paths([1.0, 2.0, 3.0, 1.0])
    assert rp == [1.0, 3.0, 4.0, 5.0] and path == [3, 2, 0]
    ordered = graph.StepLinks(("a", "b"), [(), ("a",)])
    assert ordered.in_file_order and list(ordered.topo()) == [0, 1]
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        graph.StepLinks(("a", "b"), [("b",), ("a",)]).topo()
    with pytest.raises(KeyError):
        graph.StepLinks(("a",), [("ghost",)])


def test_find_cycle_in_a_file_listing_dependents_first():
    assert find_cycle({"c": ["b"], "b": ["a", "ghost"], "a": []}) is None
    assert find_cycle({"c": ["b"], "b": ["a"], "a": ["c"]}) == ["c", "b", "a", "c"]

def test_remaining_path_defaults_missing_durations():
    rp = remaining_path({"a": [], "b": ["a"]}, ["a", "b"], {"b": None}, default=2.5)
    assert rp == {"a": 5.0, "b": 2.5}
    assert critical_path({}, [], {}) == ([], 0.0)
    # ties are broken by file order
    assert critical_path({"x": [], "y": []}, ["y", "x"], {}) == (["y"], 1.0)


# --- globs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, overlap", [
    ("src/*.py", "src/util.py", True),
    ("src/*.py", "src/a/b.py", False),                # one * stays inside one directory
    ("src/**/*.py", "src/a/b.py", True),
    ("src/**/*.py", "src/util.py", True),             # ** may match no directory
    ("docs/*.md", "src/*.py", False),
    ("a/**", "a/b/c.txt", True),
    ("*.txt", "*.md", False),
    ("examples/math_utils.py", "examples/string_utils.py", False),
    ("./src/util.py", "src/util.py", True),
    ("src/", "src/deep/x.c", True),                   # a directory covers what is below it
    ("src", "src/deep/x.c", True),
    ("srcx/a", "src/a", False),
    ("src/[abc].py", "src/b.py", True),
    ("src/[abc].py", "src/d.py", False),
    ("src/[!abc].py", "src/a.py", False),
    ("src/[!abc].py", "src/?.py", True),
    ("src/[a-c]*.py", "src/*x.py", True),
    ("data/file?.csv", "data/file10.csv", False),
    ("data/file?.csv", "data/file1.csv", True),
    ("**/test_*.py", "tests/unit/test_x.py", True),
    ("**/test_*.py", "tests/unit/conftest.py", False),
    ("a/**/b", "a/x/y/b", True),
    ("a/*/b", "a/x/y/b", False),
    ("**", "anything/at/all", True),
    (r"a\*b", "a*b", True),
    (r"a\*b", "axb", False),
    ("*.py", "*.py", True),
    ("**/*.md", "src/util.py", False),                # a file is not a directory
    ("src/*", "src/a/b.py", True),                    # `src/*` includes directories
    ("docs/v1.2", "docs/v1.2/x", False),              # a dot: a file unless written `docs/v1.2/`
    ("docs/v1.2/", "docs/v1.2/x", True),
])
def test_glob_overlap(a, b, overlap):
    got = glob_overlap(a, b)
    assert (got is not None) == overlap, got
    assert (glob_overlap(b, a) is not None) == overlap
    if overlap:
        assert _matches(a, got) and _matches(b, got), got


@pytest.mark.parametrize("raw, norm", [
    ("./src/", "src/"), ("src//a/./b", "src/a/b"), ("/abs/x", "abs/x"), ("a/**/**/b", "a/**/b"),
    (".", ""), ("a/**/", "a/**"),
])
def test_normalize_glob(raw, norm):
    assert normalize_glob(raw) == norm


def _reference_regex(pattern: str) -> re.Pattern[str]:
    """An independent reading of the glob rules, for checking: fnmatch per segment, `**` for any
    number of segments, and everything below a directory (a trailing `/`, or a last segment
    without a dot) covered too."""
    parts = []
    segs = [x for x in pattern.split("/") if x not in ("", ".")]
    directory = pattern.endswith("/") or not segs or "." not in segs[-1] or segs[-1] == "**"
    for seg in segs:
        if not seg:
            continue
        if seg == "**":
            parts.append("(?:[^/]+/)*")
            continue
        out, i = "", 0
        while i < len(seg):
            c = seg[i]
            if c == "*":
                out += "[^/]*"
            elif c == "?":
                out += "[^/]"
            elif c == "\\" and i + 1 < len(seg):
                i += 1
                out += re.escape(seg[i])
            elif c == "[" and "]" in seg[i + 2:] or (c == "[" and "]" in seg[i + 1:]):
                j = seg.index("]", i + 2 if seg[i + 1:i + 2] in ("!", "^") else i + 1)
                body = seg[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out += "(?!/)[" + body.replace("\\", "\\\\") + "]"
                i = j
            else:
                out += re.escape(c)
            i += 1
        parts.append(out + "/")
    return re.compile("".join(parts) + ("(?:[^/]+/)*" if directory else ""))


def _matches(pattern: str, path: str) -> bool:
    return _reference_regex(pattern).fullmatch(path.strip("/") + "/") is not None


SEGMENTS = ["a", "b", "*", "?", "a*", "*b", "[ab]", "[!a]", "**", "ab", "x.a"]
NAMES = ["a", "b", "ab", "ba", "x.a", "aa", "c"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3),
       st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3))
@pytest.mark.timeout(60)
def test_glob_overlap_agrees_with_brute_force(sa, sb):
    a, b = "/".join(sa), "/".join(sb)
    witness = glob_overlap(a, b)
    if witness is not None:                           # sound: the witness fits both
        assert _matches(a, witness) and _matches(b, witness), (a, b, witness)
    for depth in range(1, 4):                         # complete on every small path
        for names in itertools.product(NAMES, repeat=depth):
            path = "/".join(names)
            if _matches(a, path) and _matches(b, path):
                assert witness is not None, (a, b, path)
                return


# --- scope conflicts -----------------------------------------------------------------------------

def make_ws(specs, *, groups=(), parallel=True) -> Workstream:
    """specs: (id, depends_on, writes, reads)"""
    steps = tuple(Step(id=sid, index=i, depends_on=tuple(deps),
                       files_scope=FilesScope(writes=tuple(w), reads=tuple(r)))
                  for i, (sid, deps, w, r) in enumerate(specs))
    return Workstream(id="ws", steps=steps, execution=Execution(parallel=parallel),
                      step_groups=tuple(groups))


def test_write_write_conflict():
    ws = make_ws([("a", [], ["src/*.py"], []), ("b", [], ["src/util.py"], [])])
    [c] = scope_conflicts(ws)
    assert (c.step_a, c.step_b, c.kind) == ("a", "b", "write/write")
    assert c.pattern == "src/*.py vs src/util.py" and c.example == "src/util.py"
    assert "'a'" in c.describe() and "'b'" in c.describe() and "src/util.py" in c.describe()


def test_write_read_conflict_names_the_writer_first():
    ws = make_ws([("reader", [], [], ["src/util.py"]), ("writer", [], ["src/*.py"], [])])
    [c] = scope_conflicts(ws)
    assert (c.step_a, c.step_b, c.kind) == ("writer", "reader", "write/read")


@pytest.mark.parametrize("specs, groups, parallel", [
    ([("a", [], ["src/*.py"], []), ("b", ["a"], ["src/util.py"], [])], (), True),
    ([("a", [], ["x"], []), ("m", ["a"], [], []), ("b", ["m"], ["x"], [])], (), True),   # transitive
    ([("a", [], [], ["x"]), ("b", [], [], ["x"])], (), True),                             # read/read
    ([("a", [], ["docs/*.md"], []), ("b", [], ["src/*.py"], [])], (), True),
    ([("a", [], ["x"], []), ("b", [], ["x"], [])],
     (StepGroup(id="g", steps=("a", "b"), execute="sequential"),), True),
    ([("a", [], ["x"], []), ("b", [], ["x"], [])],
     (StepGroup(id="g", steps=("a", "b"), max_workers=1),), True),
    ([("a", [], ["x"], []), ("b", [], ["x"], [])], (), False),
    ([("a", [], ["x"], ["x"]), ("b", [], [], [])], (), True),                             # itself
])
def test_no_conflict(specs, groups, parallel):
    assert scope_conflicts(make_ws(specs, groups=groups, parallel=parallel)) == []


def test_parallel_group_still_conflicts():
    ws = make_ws([("a", [], ["x"], []), ("b", [], ["x"], [])],
                 groups=[StepGroup(id="g", steps=("a", "b"), max_workers=2)])
    assert [(c.step_a, c.step_b) for c in scope_conflicts(ws)] == [("a", "b")]


def test_write_write_preferred_over_write_read():
    ws = make_ws([("a", [], ["out/x"], ["in/y"]), ("b", [], ["in/y", "out/"], [])])
    [c] = scope_conflicts(ws)
    assert c.kind == "write/write" and c.pattern_b == "out/"


def test_pipeline_rewriting_one_file_is_fine_but_a_side_branch_is_not():
    n = 2000
    specs = [(f"s{i}", [f"s{i - 1}"] if i else [], ["state.db"], []) for i in range(n)]
    assert scope_conflicts(make_ws(specs)) == []
    specs.append(("side", [f"s{n // 2}"], [], ["state.db"]))
    found = {(c.step_a, c.kind) for c in scope_conflicts(make_ws(specs))}
    # only the steps after s1000 can run alongside 'side'
    assert found == {(f"s{i}", "write/read") for i in range(n // 2 + 1, n)}


def _naive_conflicts(ws: Workstream) -> set[tuple[str, str, str]]:
    deps = {s.id: s.depends_on for s in ws.steps}

    def reaches(x: str, y: str) -> bool:
        seen, todo = {x}, deque([x])
        while todo:
            for d in deps[todo.popleft()]:
                if d == y:
                    return True
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return False

    out = set()
    for s, t in itertools.combinations(ws.steps, 2):
        if reaches(s.id, t.id) or reaches(t.id, s.id):
            continue
        ww = any(glob_overlap(p, q) for p in s.files_scope.writes for q in t.files_scope.writes)
        wr = (any(glob_overlap(p, q) for p in s.files_scope.writes for q in t.files_scope.reads)
              or any(glob_overlap(p, q) for p in t.files_scope.writes for q in s.files_scope.reads))
        if ww:
            out.add((s.id, t.id, "write/write"))
        elif wr:
            out.add((s.id, t.id, "write/read"))
    return out


POOL = ["src/a.py", "src/b.py", "src/*.py", "src/**", "src", "docs/x.md", "docs/*.md", "**/*.md",
        "src/sub/c.py", "src/sub/*.py", "src/**/c.py", "out/", "out/r.txt", "*.txt", "r.txt"]


@pytest.mark.parametrize("seed", range(12))
def test_scope_conflicts_match_a_naive_check(seed):
    rnd = random.Random(seed)
    specs = []
    for i in range(40):
        deps = rnd.sample([f"s{j}" for j in range(i)], min(i, rnd.choice([0, 0, 1, 2])))
        specs.append((f"s{i}", deps, rnd.sample(POOL, rnd.choice([0, 0, 1, 2])),
                      rnd.sample(POOL, rnd.choice([0, 1]))))
    ws = make_ws(specs)
    got = {tuple(sorted((c.step_a, c.step_b), key=lambda s: int(s[1:]))) + (c.kind,)
           for c in scope_conflicts(ws)}
    assert got == _naive_conflicts(ws)


def test_big_graph_scope_check_and_order():
    """100 000 steps, ~300 000 edges, a scoped step every 100: one planted conflict is found."""
    rnd = random.Random(7)
    n = 100_000
    specs = []
    for i in range(n):
        deps = [f"s{j}" for j in rnd.sample(range(max(0, i - 50), i), min(i, 3))]
        writes = [f"out/part{i}.txt"] if i % 100 == 0 else []
        reads = ["src/**/*.py"] if i % 100 == 50 else []
        specs.append((f"s{i}", deps, writes, reads))
    # The plant: a last step with no dependencies, so it may run alongside s500.
    specs[n - 1] = (f"s{n - 1}", [], ["out/part500.txt"], [])
    ws = make_ws(specs)
    conflicts = scope_conflicts(ws)
    assert [(c.step_a, c.step_b, c.kind) for c in conflicts] == [("s500", f"s{n - 1}", "write/write")]
    deps = {s.id: s.depends_on for s in ws.steps}
    order = topological_order(deps, ws.step_ids)
    position = {sid: i for i, sid in enumerate(order)}
    assert len(order) == n
    assert all(position[d] < position[s] for s, ds in deps.items() for d in ds)
    path, total = critical_path(deps, ws.step_ids, {})
    assert total == len(path) and all(p in deps[q] for p, q in zip(path, path[1:]))


def test_conflict_is_a_frozen_record():
    c = Conflict("a", "b", "write/write", "x")
    with pytest.raises(AttributeError):
        c.step_a = "z"  # type: ignore[misc]
    assert graph.Conflict is Conflict


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab*?[]!^-\\/.", max_size=10), st.text(alphabet="ab*?[]!^-\\/.", max_size=10))
@pytest.mark.timeout(60)
def test_glob_overlap_never_fails_on_odd_patterns(a, b):
    got = glob_overlap(a, b)
    assert (got is None) == (glob_overlap(b, a) is None)
    assert glob_overlap(a, a) is not None or "[" in a    # only an empty class can match nothing
