"""The dependency graph: cycles, order, critical paths and file-scope conflicts, as pure functions.

A graph is `deps`, a mapping from each step id to the ids it depends on, plus `order`, the step ids in
file order (the last tie-breaker everywhere, so every result is deterministic). Everything is
iterative and O(V + E) (the order uses a heap, O((V + E) log V)), because a workstream of 100 000
steps must validate in a second or two and Python's recursion limit is about 1000.

File scopes are globs relative to the project root, with gitignore meaning: `*`, `?` and `[...]`
stay inside one path segment, a `**` segment matches any number of segments, and a pattern covers
everything below what it matches (`dir` and `dir/` both mean the directory and its contents). A
pattern without a slash is anchored at the root (`*.py` is the top-level Python files). Two globs
overlap when some path is matched by both; `glob_overlap` decides it exactly by searching the
product of the two patterns' automata, first over path segments and then, for two single-segment
globs, over characters (character classes are intervals of code points). `scope_conflicts` finds
the pairs of steps that may run at the same time and touch overlapping files without comparing
every pair of steps: literal paths go into a trie keyed by segment (a glob walks the trie, carrying
its automaton state, and stops where the state dies), globs are compared only with globs whose
literal prefix is compatible, and reachability is answered for the candidate pairs only, with
bitsets propagated once in topological order.
"""
from __future__ import annotations

import functools
import heapq
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .model import Workstream

__all__ = ["Conflict", "critical_path", "dependents", "find_cycle", "glob_overlap", "normalize_glob",
           "remaining_path", "scope_conflicts", "topological_order"]


# --- order and paths -------------------------------------------------------------------------------

def _positions(deps: Mapping[str, Sequence[str]], order: Sequence[str]) -> dict[str, int]:
    """File position of every node; nodes missing from `order` come after, in `deps` order."""
    pos: dict[str, int] = {}
    for node in order:
        pos.setdefault(node, len(pos))
    for node in deps:
        pos.setdefault(node, len(pos))
    return pos


def dependents(deps: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Invert `deps`: for every step, the steps that depend on it directly (in `deps` order)."""
    out: dict[str, list[str]] = {node: [] for node in deps}
    for node, ds in deps.items():
        for d in ds:
            if d in out:
                out[d].append(node)
    return out


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as `[a, b, c, a]` (a depends on b, b on c, c on a), or None.

    Iterative depth-first search with three colours; the first back edge closes the cycle.
    """
    state: dict[str, int] = {}            # absent: unseen; 1: on the current path; 2: finished
    for root in deps:
        if root in state:
            continue
        path: list[str] = [root]
        where: dict[str, int] = {root: 0}  # node -> index in `path`
        state[root] = 1
        stack: list[Any] = [iter(deps[root])]
        while stack:
            for nxt in stack[-1]:
                if nxt not in deps:
                    continue
                seen = state.get(nxt)
                if seen == 1:
                    return path[where[nxt]:] + [nxt]
                if seen is None:
                    state[nxt] = 1
                    where[nxt] = len(path)
                    path.append(nxt)
                    stack.append(iter(deps[nxt]))
                    break
            else:                          # every dependency of the top node is finished
                stack.pop()
                done = path.pop()
                del where[done]
                state[done] = 2
    return None


def topological_order(deps: Mapping[str, Sequence[str]], order: Sequence[str] = ()) -> list[str]:
    """Dependencies first; among steps ready at the same time, file order. ValueError on a cycle."""
    pos = _positions(deps, order)
    names = sorted(pos, key=pos.__getitem__)
    users: list[list[int]] = [[] for _ in names]
    indeg = [0] * len(names)
    for node, ds in deps.items():
        i = pos[node]
        for d in ds:
            j = pos.get(d)
            if j is not None:
                indeg[i] += 1
                users[j].append(i)
    heap = [i for i, n in enumerate(indeg) if n == 0]   # already sorted, so already a heap
    out: list[str] = []
    while heap:
        i = heapq.heappop(heap)
        out.append(names[i])
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(heap, u)
    if len(out) != len(names):
        cycle = find_cycle(deps)
        raise ValueError("dependency cycle: " + " -> ".join(cycle or ["?"]))
    return out


def remaining_path(deps: Mapping[str, Sequence[str]], order: Sequence[str],
                   durations: Mapping[str, float | None], default: float = 1.0) -> dict[str, float]:
    """For every step, the longest chain of durations from it (itself included) to the graph's end."""
    topo = topological_order(deps, order)
    users = dependents({n: deps.get(n, ()) for n in topo})
    out: dict[str, float] = {}
    for node in reversed(topo):            # every dependent is final before its dependencies
        d = durations.get(node)
        own = default if d is None else float(d)
        out[node] = own + max((out[u] for u in users[node]), default=0.0)
    return out


def critical_path(deps: Mapping[str, Sequence[str]], order: Sequence[str],
                  durations: Mapping[str, float | None], default: float = 1.0
                  ) -> tuple[list[str], float]:
    """The longest chain of dependent steps by total duration, and that total."""
    rp = remaining_path(deps, order, durations, default)
    if not rp:
        return [], 0.0
    pos = _positions(deps, order)
    users = dependents({n: deps.get(n, ()) for n in rp})
    best = max(rp, key=lambda n: (rp[n], -pos[n]))
    path = [best]
    while users[path[-1]]:
        path.append(max(users[path[-1]], key=lambda n: (rp[n], -pos[n])))
    return path, rp[best]


# --- globs -----------------------------------------------------------------------------------------

_MAX_CP = 0x10FFFF
_SLASH = ord("/")
_ANY = ((0, _SLASH - 1), (_SLASH + 1, _MAX_CP))    # `?`: any character but '/'
_STAR = "*"
_DSTAR = "**"
_GLOB_CHARS = re.compile(r"[*?\[\\]")

Intervals = tuple[tuple[int, int], ...]
Token = Any                                        # _STAR or Intervals


def normalize_glob(pattern: str) -> str:
    """`./src//a/` -> `src/a`: drop `.` and empty segments and a leading `/`, collapse `**/**`."""
    segs: list[str] = []
    for seg in pattern.split("/"):
        if seg in ("", "."):
            continue
        if seg == _DSTAR and segs and segs[-1] == _DSTAR:
            continue
        segs.append(seg)
    return "/".join(segs)


def _segments(pattern: str) -> tuple[str, ...]:
    """A normalised pattern's segments plus the implicit `**` that makes it cover what is below."""
    segs = [s for s in normalize_glob(pattern).split("/") if s]
    if not segs or segs[-1] != _DSTAR:
        segs.append(_DSTAR)
    return tuple(segs)


def _merge(iv: Iterable[tuple[int, int]]) -> Intervals:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(iv):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _complement(a: Intervals) -> Intervals:
    out, start = [], 0
    for lo, hi in a:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_CP:
        out.append((start, _MAX_CP))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _tokens(seg: str) -> tuple[Token, ...]:
    """One segment glob as tokens: `*`, or a set of characters (a literal is a one-char set)."""
    toks: list[Token] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        i += 1
        if c == "*":
            if not toks or toks[-1] != _STAR:        # `**` inside a segment is just `*`
                toks.append(_STAR)
        elif c == "?":
            toks.append(_ANY)
        elif c == "\\" and i < n:
            toks.append(((ord(seg[i]), ord(seg[i])),))
            i += 1
        elif c == "[":
            j = i
            negate = j < n and seg[j] in "!^"
            j += negate
            if j < n and seg[j] == "]":              # a leading ']' is a literal
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:                               # no closing bracket: a literal '['
                toks.append(((ord("["), ord("[")),))
                continue
            body = seg[i + negate:j]
            i = j + 1
            ranges: list[tuple[int, int]] = []
            k = 0
            while k < len(body):
                lo = body[k]
                if lo == "\\" and k + 1 < len(body):
                    k += 1
                    lo = body[k]
                if k + 2 < len(body) and body[k + 1] == "-":
                    ranges.append((ord(lo), ord(body[k + 2])))
                    k += 3
                else:
                    ranges.append((ord(lo), ord(lo)))
                    k += 1
            iv = _merge(ranges)
            toks.append(_intersect(_complement(iv) if negate else iv, _ANY))
        else:
            toks.append(((ord(c), ord(c)),))
    return tuple(toks)


def _pick(iv: Intervals) -> str:
    """A readable character from a non-empty set, for example paths in messages."""
    for ch in "xabcdefghijklmnopqrstuvwyz0123456789_-.XABCDEFGHIJKLMNOPQRSTUVWYZ":
        o = ord(ch)
        if any(lo <= o <= hi for lo, hi in iv):
            return ch
    lo = iv[0][0]
    return chr(max(lo, 0x21)) if any(l <= 0x21 <= h for l, h in iv) else chr(lo)


@functools.lru_cache(maxsize=65536)
def _segment_overlap(a: str, b: str) -> str | None:
    """A non-empty string matched by both segment globs, or None: 0-1 BFS over token positions."""
    ta, tb = _tokens(a), _tokens(b)
    start = (0, 0)
    parent: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue: deque[tuple[int, int]] = deque([start])
    goal = (len(ta), len(tb))
    while queue:
        state = queue.popleft()
        if state == goal:
            chars: list[str] = []
            while parent[state] is not None:
                state, ch = parent[state]  # type: ignore[misc]
                chars.append(ch)
            word = "".join(reversed(chars))
            if ta and tb and ta[0] == _STAR and tb[0] == _STAR and not word[:1].isalnum():
                word = "x" + word          # `a.py` reads better than the hidden `.py`; both fit
            return word
        i, j = state
        x = ta[i] if i < len(ta) else None
        y = tb[j] if j < len(tb) else None
        moves: list[tuple[tuple[int, int], str, bool]] = []   # (next, char consumed, free move)
        if x == _STAR:
            moves.append(((i + 1, j), "", True))
        if y == _STAR:
            moves.append(((i, j + 1), "", True))
        if x is not None and y is not None:
            if x == _STAR and y != _STAR:
                if y:                      # an empty class (`[/]`) matches nothing
                    moves.append(((i, j + 1), _pick(y), False))
            elif y == _STAR and x != _STAR:
                if x:
                    moves.append(((i + 1, j), _pick(x), False))
            elif x != _STAR and y != _STAR:
                both = _intersect(x, y)
                if both:
                    moves.append(((i + 1, j + 1), _pick(both), False))
        for nxt, ch, free in moves:
            if nxt not in parent:
                parent[nxt] = (state, ch)
                (queue.appendleft if free else queue.append)(nxt)
    return None


def glob_overlap(a: str, b: str) -> str | None:
    """A path matched by both globs (a witness for messages), or None when they cannot meet."""
    sa, sb = _segments(a), _segments(b)
    start = (0, 0)
    goal = (len(sa), len(sb))
    parent: dict[tuple[int, int], tuple[tuple[int, int], str | None] | None] = {start: None}
    queue: deque[tuple[int, int]] = deque([start])
    while queue:
        state = queue.popleft()
        if state == goal:
            segs: list[str] = []
            while parent[state] is not None:
                state, seg = parent[state]  # type: ignore[misc]
                if seg is not None:
                    segs.append(seg)
            return "/".join(reversed(segs)) or "**"   # both cover the whole tree
        i, j = state
        x = sa[i] if i < len(sa) else None
        y = sb[j] if j < len(sb) else None
        moves: list[tuple[tuple[int, int], str | None]] = []  # (next, segment consumed; None: free)
        if x == _DSTAR:
            moves.append(((i + 1, j), None))
        if y == _DSTAR:
            moves.append(((i, j + 1), None))
        if x is not None and y is not None:
            seg: str | None = ""
            if x == _DSTAR and y != _DSTAR:
                seg, nxt = _segment_overlap(y, _STAR), (i, j + 1)
            elif y == _DSTAR and x != _DSTAR:
                seg, nxt = _segment_overlap(x, _STAR), (i + 1, j)
            elif x != _DSTAR and y != _DSTAR:
                seg, nxt = _segment_overlap(x, y), (i + 1, j + 1)
            if seg:                         # None: no name fits both (an unsatisfiable segment)
                moves.append((nxt, seg))
        for nxt, seg in moves:
            if nxt not in parent:
                parent[nxt] = (state, seg)
                (queue.appendleft if seg is None else queue.append)(nxt)
    return None


@functools.lru_cache(maxsize=65536)
def _segment_regex(seg: str) -> re.Pattern[str]:
    """A compiled matcher for one segment glob, built from the same tokens as the overlap search."""
    parts = []
    for tok in _tokens(seg):
        if tok == _STAR:
            parts.append("[^/]*")
        else:
            parts.append("[" + "".join(
                f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in tok) + "]")
    return re.compile("(?s:" + "".join(parts) + r")\Z")


def _literal(pattern: str) -> bool:
    return _GLOB_CHARS.search(pattern) is None


class _GlobNFA:
    """A glob (with its implicit trailing `**`) read one path segment at a time."""

    def __init__(self, pattern: str) -> None:
        self.segs = _segments(pattern)

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        out = set()
        for i in states:
            out.add(i)
            while i < len(self.segs) and self.segs[i] == _DSTAR:   # `**` may match nothing
                i += 1
                out.add(i)
        return frozenset(out)

    def step(self, states: frozenset[int], name: str) -> frozenset[int]:
        nxt = []
        for i in states:
            if i >= len(self.segs):
                continue
            seg = self.segs[i]
            if seg == _DSTAR:
                nxt.append(i)
            elif _segment_regex(seg).match(name):
                nxt.append(i + 1)
        return self.closure(nxt) if nxt else frozenset()


# --- scope conflicts --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conflict:
    """Two steps that may run at the same time and touch overlapping files.

    For `write/read`, `step_a` writes and `step_b` reads; for `write/write` they are in file order.
    """

    step_a: str
    step_b: str
    kind: str                                  # "write/write" | "write/read"
    pattern: str                               # the overlap, e.g. "src/*.py vs src/util.py"
    pattern_a: str = ""
    pattern_b: str = ""
    example: str = ""                          # a path both patterns match

    def describe(self) -> str:
        verb = "both write" if self.kind == "write/write" else "one writes what the other reads:"
        detail = (f"'{self.step_a}' writes '{self.pattern_a}', '{self.step_b}' "
                  f"{'writes' if self.kind == 'write/write' else 'reads'} '{self.pattern_b}'")
        where = self.example if self.pattern_a == self.pattern_b else f"{self.example} ({detail})"
        return (f"steps '{self.step_a}' and '{self.step_b}' may run at the same time and {verb} "
                f"{where}")


class _Trie:
    """Paths by segment; each node holds the entries whose (literal) path ends there."""

    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.entries: list[int] = []

    def node(self, segs: Sequence[str]) -> _Trie:
        node = self
        for seg in segs:
            node = node.children.setdefault(seg, _Trie())
        return node


def _literal_prefix(pattern: str) -> tuple[str, ...]:
    """The leading segments that contain no wildcard: the only place a glob's matches can start."""
    out = []
    for seg in normalize_glob(pattern).split("/"):
        if not seg or not _literal(seg):
            break
        out.append(seg)
    return tuple(out)


def scope_conflicts(ws: Workstream) -> list[Conflict]:
    """Pairs of steps that may run at the same time (neither reaches the other through depends_on,
    no sequential group holds both) and write overlapping files, or one writes what the other reads.

    At most one conflict per pair of steps (write/write before write/read), in file order.
    """
    if not ws.execution.parallel:
        return []
    # Entries: one per (step, pattern); kind "w" or "r". Reads that are also writes count as writes.
    e_step: list[int] = []
    e_kind: list[str] = []
    e_pat: list[str] = []
    for idx, step in enumerate(ws.steps):
        writes = set(step.files_scope.writes)
        for kind, pats in (("w", step.files_scope.writes), ("r", step.files_scope.reads)):
            for pat in dict.fromkeys(pats):
                if kind == "r" and pat in writes:
                    continue
                e_step.append(idx)
                e_kind.append(kind)
                e_pat.append(pat)
    if not e_step:
        return []

    candidates: dict[tuple[int, int], tuple[int, int]] = {}   # step pair -> entries (a, b)

    def consider(a: int, b: int) -> None:
        sa, sb = e_step[a], e_step[b]
        if sa == sb or (e_kind[a] == "r" and e_kind[b] == "r"):
            return
        key = (sa, sb) if sa < sb else (sb, sa)
        old = candidates.get(key)
        if old is None or (e_kind[a] == e_kind[b] == "w" and not e_kind[old[0]] == e_kind[old[1]]):
            candidates[key] = (a, b)

    topo_pos = _topo_positions(ws)
    literal_trie = _Trie()
    glob_trie = _Trie()
    globs: list[int] = []
    for e, pat in enumerate(e_pat):
        if _literal(pat):
            literal_trie.node(_segments(pat)[:-1]).entries.append(e)
        else:
            globs.append(e)
            glob_trie.node(_literal_prefix(pat)).entries.append(e)

    # Literal vs literal: the same path (a clique), or one path below the other.
    cliques: list[list[int]] = []
    stack: list[tuple[_Trie, list[int]]] = [(literal_trie, [])]
    while stack:
        node, above = stack.pop()
        if node.entries:
            cliques.append(node.entries)
            for a in above:
                for b in node.entries:
                    consider(a, b)
            above = above + node.entries
        for child in node.children.values():
            stack.append((child, above))
    _cliques(cliques, e_step, e_kind, topo_pos, ws, consider)

    # Glob vs literal: walk the trie with the glob's automaton; a dead state prunes the subtree.
    for g in globs:
        nfa = _GlobNFA(e_pat[g])
        walk: list[tuple[_Trie, frozenset[int]]] = [(literal_trie, nfa.closure([0]))]
        while walk:
            node, states = walk.pop()
            for b in node.entries:
                consider(g, b)
            for name, child in node.children.items():
                nxt = nfa.step(states, name)
                if nxt:
                    walk.append((child, nxt))

    # Glob vs glob: only globs whose literal prefixes lie on one path of the prefix trie can meet.
    for g in globs:
        node = glob_trie
        prefix = _literal_prefix(e_pat[g])
        for depth in range(len(prefix) + 1):
            for other in node.entries:
                if depth == len(prefix) and other >= g:
                    break                      # same prefix: each pair once
                if glob_overlap(e_pat[g], e_pat[other]) is not None:
                    consider(g, other)
            if depth < len(prefix):
                node = node.children[prefix[depth]]

    if not candidates:
        return []
    ordered = _ordered_pairs(ws, set(candidates), topo_pos)
    exclusive = _exclusive_groups(ws)
    out: list[Conflict] = []
    for (sa, sb), (a, b) in sorted(candidates.items()):
        if (sa, sb) in ordered:
            continue
        if exclusive.get(sa) and exclusive[sa] & exclusive.get(sb, set()):
            continue
        if e_kind[a] == "r":                   # the writer first
            a, b = b, a
        kind = "write/write" if e_kind[a] == e_kind[b] else "write/read"
        pa, pb = e_pat[a], e_pat[b]
        out.append(Conflict(step_a=ws.steps[e_step[a]].id, step_b=ws.steps[e_step[b]].id, kind=kind,
                            pattern=pa if pa == pb else f"{pa} vs {pb}", pattern_a=pa, pattern_b=pb,
                            example=glob_overlap(pa, pb) or pa))
    return out


def _topo_positions(ws: Workstream) -> list[int]:
    """Position of every step (by index) in a topological order; ValueError on a cycle."""
    deps = {s.id: s.depends_on for s in ws.steps}
    index = {s.id: i for i, s in enumerate(ws.steps)}
    pos = [0] * len(ws.steps)
    for p, name in enumerate(topological_order(deps, [s.id for s in ws.steps])):
        pos[index[name]] = p
    return pos


def _cliques(cliques: list[list[int]], e_step: list[int], e_kind: list[str], topo_pos: list[int],
             ws: Workstream, consider: Any) -> None:
    """Entries naming one path all overlap each other. When the steps of such a clique form a chain
    of dependencies (a pipeline that rewrites one file), no pair of them can conflict, so the
    quadratic enumeration is skipped; one reachability pass checks every clique's chain at once."""
    chains: dict[int, list[tuple[int, int]]] = {}
    for c, entries in enumerate(cliques):
        steps = sorted({e_step[e] for e in entries}, key=topo_pos.__getitem__)
        if len(steps) > 2 and sum(e_kind[e] == "w" for e in entries) > 1:
            chains[c] = [(min(a, b), max(a, b)) for a, b in zip(steps, steps[1:])]
    ordered = _ordered_pairs(ws, {p for ps in chains.values() for p in ps}, topo_pos) if chains else set()
    for c, entries in enumerate(cliques):
        if c in chains and all(p in ordered for p in chains[c]):
            continue                            # a chain: every pair is ordered by transitivity
        for a in entries:
            if e_kind[a] != "w":
                continue
            for b in entries:
                if b != a and (e_kind[b] == "r" or a < b):
                    consider(a, b)


def _ordered_pairs(ws: Workstream, pairs: set[tuple[int, int]], topo_pos: list[int]
                   ) -> set[tuple[int, int]]:
    """The pairs (by step index) where one step depends on the other, directly or not.

    Only the earlier step of a pair (in topological order) can be an ancestor of the later one, so
    give each such "target" a bit and OR the bits along the edges once, in topological order; a
    node's bitset is dropped as soon as its last dependent has read it.
    """
    index = {s.id: i for i, s in enumerate(ws.steps)}
    deps = [[index[d] for d in s.depends_on if d in index] for s in ws.steps]
    bit: dict[int, int] = {}
    queries: dict[int, list[tuple[int, int]]] = {}      # later step -> (earlier step, pair)
    for a, b in pairs:
        early, late = (a, b) if topo_pos[a] < topo_pos[b] else (b, a)
        bit.setdefault(early, 1 << len(bit))
        queries.setdefault(late, []).append((early, (a, b)))
    readers = [0] * len(ws.steps)
    for ds in deps:
        for d in ds:
            readers[d] += 1
    by_topo = sorted(range(len(ws.steps)), key=topo_pos.__getitem__)
    last = max(topo_pos[n] for n in queries)
    ancestors: dict[int, int] = {}
    found: set[tuple[int, int]] = set()
    for n in by_topo:
        if topo_pos[n] > last:
            break
        acc = 0
        for d in deps[n]:
            acc |= ancestors.get(d, 0) | bit.get(d, 0)
            readers[d] -= 1
            if readers[d] == 0:
                ancestors.pop(d, None)
        for early, pair in queries.get(n, ()):
            if acc & bit[early]:
                found.add(pair)
        if acc and readers[n]:
            ancestors[n] = acc
    return found


def _exclusive_groups(ws: Workstream) -> dict[int, set[str]]:
    """Step index -> ids of the groups that never run two of their steps at once."""
    index = {s.id: i for i, s in enumerate(ws.steps)}
    out: dict[int, set[str]] = {}
    for group in ws.step_groups:
        if group.execute == "sequential" or group.max_workers == 1:
            for sid in group.steps:
                if sid in index:
                    out.setdefault(index[sid], set()).add(group.id)
    return out
