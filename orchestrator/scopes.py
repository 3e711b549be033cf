"""File-scope conflicts: the pairs of steps that may run at the same time and touch overlapping files.

Two steps conflict when neither reaches the other through `depends_on`, no sequential step group holds
both, and one writes what the other writes or reads. Scopes are globs, read and compared by `globs`.
`scope_conflicts` finds the pairs without comparing every pair of steps: literal paths go into a trie
keyed by segment (a glob walks the trie, carrying its automaton state, and stops where the state
dies), globs are compared only with globs whose literal prefix is compatible, and reachability is
answered for the candidate pairs only, with bitsets propagated once in topological order over
`graph.IndexedGraph`. The loader refuses a workstream with conflicts (or, with `--on-conflict
serialize`, the scheduler never runs such a pair together).
"""
from __future__ import annotations


from .frozen import record
from .globs import GlobNFA, glob_overlap, is_directory, is_literal, literal_prefix, normalize_glob
from .graph import IndexedGraph
from .model import Workstream

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator, Sequence

__all__ = ["Conflict", "scope_conflicts"]


@record
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
        """One sentence for a person: both steps, what overlaps, and each side's pattern."""
        a, b = f"'{self.step_a}'", f"'{self.step_b}'"
        head = f"steps {a} and {b} may run at the same time and "
        if self.kind == "write/write":
            head += "both write "
        else:
            head += f"{b} reads what {a} writes: "
        if self.pattern_a == self.pattern_b:
            return head + f"'{self.pattern_a}'"
        verb = "writes" if self.kind == "write/write" else "reads"
        return (head + f"{self.example or self.pattern} ({a} writes '{self.pattern_a}', "
                f"{b} {verb} '{self.pattern_b}')")


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


def scope_conflicts(ws: Workstream) -> list[Conflict]:
    """Pairs of steps that may run at the same time (neither reaches the other through depends_on,
    no sequential group holds both) and write overlapping files, or one writes what the other reads.

    At most one conflict per pair of steps (write/write before write/read), in file order. Never
    compares all pairs of steps: see the module docstring.
    """
    if not ws.execution.parallel:
        return []
    # Entries: one per (step, pattern), kind "w" or "r"; a pattern both read and written is a write.
    e_step: list[int] = []
    e_kind: list[str] = []
    e_pat: list[str] = []
    for idx, step in enumerate(ws.steps):
        if not step.files_scope.writes and not step.files_scope.reads:
            continue
        writes = set(step.files_scope.writes)
        for kind, pats in (("w", step.files_scope.writes), ("r", step.files_scope.reads)):
            for pat in dict.fromkeys(pats):
                if kind == "w" or pat not in writes:
                    e_step.append(idx)
                    e_kind.append(kind)
                    e_pat.append(pat)
    if not e_step:
        return []
    # Patterns are compared once per distinct (normalised) text, whatever the number of steps.
    uniq: dict[str, int] = {}
    u_entries: list[list[int]] = []
    for e, pat in enumerate(e_pat):
        u = uniq.setdefault(normalize_glob(pat), len(uniq))
        if u == len(u_entries):
            u_entries.append([])
        u_entries[u].append(e)
    u_pat = list(uniq)
    u_writes = [any(e_kind[e] == "w" for e in es) for es in u_entries]

    candidates: dict[tuple[int, int], tuple[int, int]] = {}   # step pair -> entries (a, b)

    def cross(u: int, v: int) -> None:
        if not (u_writes[u] or u_writes[v]):
            return
        for a in u_entries[u]:
            for b in u_entries[v]:
                sa, sb = e_step[a], e_step[b]
                if sa == sb or (e_kind[a] == "r" and e_kind[b] == "r"):
                    continue
                key = (sa, sb) if sa < sb else (sb, sa)
                old = candidates.get(key)
                # Keep one pair of entries per pair of steps, preferring write/write.
                if old is None or (e_kind[a] == e_kind[b] and e_kind[old[0]] != e_kind[old[1]]):
                    candidates[key] = (a, b)

    literal_trie, glob_trie = _Trie(), _Trie()
    globs: list[int] = []
    u_dir = [is_directory(p) for p in u_pat]
    for u, pat in enumerate(u_pat):
        if is_literal(pat):
            literal_trie.node([x for x in pat.split("/") if x]).entries.append(u)
        else:
            globs.append(u)
            glob_trie.node(literal_prefix(pat)).entries.append(u)

    g = IndexedGraph({s.id: s.depends_on for s in ws.steps}, [s.id for s in ws.steps])
    topo = g.topo()
    topo_pos = [0] * len(topo)
    for p, n in enumerate(topo):
        topo_pos[n] = p
    # Node numbers of `g` are step indexes: ids are unique and `order` is the file order.

    # Literal vs literal: the same path (a clique), or one path below a directory.
    glob_set = set(globs)
    cliques: list[list[int]] = [u_entries[u] for u in range(len(u_pat))
                                if u not in glob_set or glob_overlap(u_pat[u], u_pat[u]) is not None]
    stack: list[tuple[_Trie, list[int]]] = [(literal_trie, [])]
    while stack:
        node, above = stack.pop()
        if node.entries:
            for a in above:
                for b in node.entries:
                    cross(a, b)
            above = above + [u for u in node.entries if u_dir[u]]
        for child in node.children.values():
            stack.append((child, above))

    # Glob vs literal: walk the trie with the glob's automaton; a dead state prunes the subtree.
    for u in globs:
        nfa = GlobNFA(u_pat[u])
        walk: list[tuple[_Trie, frozenset[int]]] = [(literal_trie, nfa.closure([0]))]
        while walk:
            node, states = walk.pop()
            for v in node.entries:
                # A directory meets the glob if the glob can still match below it; a file only
                # if the glob matches the file itself.
                if u_dir[v] or nfa.accepts(states):
                    cross(u, v)
            for name, child in node.children.items():
                nxt = nfa.step(states, name)
                if nxt:
                    walk.append((child, nxt))

    # Glob vs glob: only globs whose literal prefixes lie on one path of the prefix trie can meet.
    for u in globs:
        node = glob_trie
        prefix = literal_prefix(u_pat[u])
        for depth in range(len(prefix) + 1):
            for v in node.entries:
                if depth == len(prefix) and v >= u:
                    break                      # same prefix: each pair once
                if (u_writes[u] or u_writes[v]) and glob_overlap(u_pat[u], u_pat[v]) is not None:
                    cross(u, v)
            if depth < len(prefix):
                node = node.children[prefix[depth]]

    _cliques(cliques, e_step, e_kind, g, topo, topo_pos, candidates)
    if not candidates:
        return []
    ordered = _ordered_pairs(g, topo, topo_pos, set(candidates))
    exclusive = _exclusive_groups(ws)
    out: list[Conflict] = []
    for (sa, sb), (a, b) in sorted(candidates.items()):
        if (sa, sb) in ordered or (exclusive.get(sa, _NONE) & exclusive.get(sb, _NONE)):
            continue
        if e_kind[a] == "r" or (e_kind[b] == "w" and e_step[a] > e_step[b]):
            a, b = b, a                        # the writer first, else file order
        kind = "write/write" if e_kind[a] == e_kind[b] else "write/read"
        pa, pb = e_pat[a], e_pat[b]
        out.append(Conflict(step_a=ws.steps[e_step[a]].id, step_b=ws.steps[e_step[b]].id, kind=kind,
                            pattern=pa if pa == pb else f"{pa} vs {pb}", pattern_a=pa, pattern_b=pb,
                            example=glob_overlap(pa, pb) or pa))
    return out


_NONE: frozenset[str] = frozenset()


def _cliques(cliques: list[list[int]], e_step: list[int], e_kind: list[str], g: IndexedGraph,
             topo: list[int], topo_pos: list[int],
             candidates: dict[tuple[int, int], tuple[int, int]]) -> None:
    """Entries naming one pattern all overlap each other, so their steps conflict exactly where
    they are unordered. Enumerating every pair would be quadratic (a pipeline of 10 000 steps that
    rewrite one file), so: when the steps form a chain of dependencies, no pair conflicts (one
    reachability pass checks every clique's chain at once); otherwise the unordered partners of each
    writer are read off ancestor and descendant bitsets, in time proportional to the answer."""

    def add(a: int, b: int) -> None:
        key = (e_step[a], e_step[b]) if e_step[a] < e_step[b] else (e_step[b], e_step[a])
        old = candidates.get(key)
        if old is None or (e_kind[b] == "w" and e_kind[old[0]] != e_kind[old[1]]):
            candidates[key] = (a, b)

    chains: dict[int, list[tuple[int, int]]] = {}
    for c, entries in enumerate(cliques):
        steps = sorted({e_step[e] for e in entries}, key=topo_pos.__getitem__)
        if len(steps) > 2 and sum(e_kind[e] == "w" for e in entries) > 1:
            chains[c] = [(min(a, b), max(a, b)) for a, b in zip(steps, steps[1:])]
        else:                                   # at most one writer or two steps: few pairs
            for a in entries:
                if e_kind[a] == "w":
                    for b in entries:
                        if e_step[a] != e_step[b] and (e_kind[b] == "r" or a < b):
                            add(a, b)
    if not chains:
        return
    ordered = _ordered_pairs(g, topo, topo_pos, {p for ps in chains.values() for p in ps})
    hard = [c for c, links in chains.items() if not all(p in ordered for p in links)]
    if not hard:
        return
    nodes = {e_step[e] for c in hard for e in cliques[c]}
    bit, anc, desc = _reach_bits(g, topo, nodes)
    node_of = {b: n for n, b in bit.items()}
    for c in hard:
        by_step: dict[int, list[int]] = {}
        for e in cliques[c]:
            by_step.setdefault(e_step[e], []).append(e)
        mask = 0
        for n in by_step:
            mask |= bit[n]
        for a in cliques[c]:
            if e_kind[a] != "w":
                continue
            n = e_step[a]
            free = mask & ~(anc[n] | desc[n] | bit[n])
            while free:
                low = free & -free
                free ^= low
                for b in by_step[node_of[low]]:
                    add(a, b)


def _reach_bits(g: IndexedGraph, topo: list[int], nodes: set[int]
                ) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """For each of `nodes`: a bit, and the bitsets of its ancestors and descendants among them."""
    bit = {n: 1 << k for k, n in enumerate(sorted(nodes))}
    anc: dict[int, int] = {}
    desc: dict[int, int] = {}
    for result, edges, at, back_at, sweep in ((anc, g.deps, g.dep_at, g.user_at, topo),
                                               (desc, g.users, g.user_at, g.dep_at, topo[::-1])):
        readers = [back_at[i + 1] - back_at[i] for i in range(len(topo))]
        for n, acc in _bit_sweep(sweep, edges, at, readers, bit):
            if n in bit:
                result[n] = acc
    return bit, anc, desc


def _bit_sweep(order: list[int], edges: list[int], at: list[int], readers: list[int],
               bit: dict[int, int]) -> Iterator[tuple[int, int]]:
    """Yield each node of `order` with the OR of the bits of everything it reaches along `edges`
    (`order` visits a node after all it reaches). A node's set is kept until its `readers` (the
    nodes that reach it in one edge; decremented here) have all read it, then dropped."""
    live: dict[int, int] = {}
    for n in order:
        acc = 0
        for d in edges[at[n]:at[n + 1]]:
            acc |= live.get(d, 0) | bit.get(d, 0)
            readers[d] -= 1
            if readers[d] == 0:
                live.pop(d, None)
        yield n, acc
        if acc and readers[n]:
            live[n] = acc


def _ordered_pairs(g: IndexedGraph, topo: list[int], topo_pos: list[int], pairs: set[tuple[int, int]]
                   ) -> set[tuple[int, int]]:
    """The pairs (of node numbers) where one node depends on the other, directly or not.

    Only the earlier node of a pair (in topological order) can be an ancestor of the later one, so
    each such "target" gets a bit, and the bits are ORed along the edges once, in topological order
    (big ints are bitsets); a node's set is dropped once its last dependent has read it.
    """
    bit: dict[int, int] = {}
    queries: dict[int, list[tuple[int, tuple[int, int]]]] = {}   # later -> (earlier, pair)
    for a, b in pairs:
        early, late = (a, b) if topo_pos[a] < topo_pos[b] else (b, a)
        bit.setdefault(early, 1 << len(bit))
        queries.setdefault(late, []).append((early, (a, b)))
    readers = [g.user_at[i + 1] - g.user_at[i] for i in range(len(topo))]
    first = min(topo_pos[n] for n in bit)        # before it, every set is empty
    last = max(topo_pos[n] for n in queries)     # after it, nothing is asked
    found: set[tuple[int, int]] = set()
    for n, acc in _bit_sweep(topo[first:last + 1], g.deps, g.dep_at, readers, bit):
        if acc:
            for early, pair in queries.get(n, ()):
                if acc & bit[early]:
                    found.add(pair)
    return found


def _exclusive_groups(ws: Workstream) -> dict[int, frozenset[str]]:
    """Step index -> ids of the groups that never run two of their steps at once."""
    index = {s.id: i for i, s in enumerate(ws.steps)}
    out: dict[int, set[str]] = {}
    for group in ws.step_groups:
        if group.execute == "sequential" or group.max_workers == 1:
            for sid in group.steps:
                if sid in index:
                    out.setdefault(index[sid], set()).add(group.id)
    return {k: frozenset(v) for k, v in out.items()}
