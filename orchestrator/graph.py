"""The dependency graph: cycles, order and critical paths, as pure functions.

A graph is `deps`, a mapping from each step id to the ids it depends on, plus `order`, the step ids in
file order (the last tie-breaker everywhere, so every result is deterministic). Everything is
iterative and O(V + E) (the order uses a heap, O((V + E) log V)), because a workstream of 100 000
steps must validate in a second or two and Python's recursion limit is about 1000. `IndexedGraph`
holds a graph over integer node numbers in flat arrays for the passes that must be fast at that size.
File-scope conflicts are in `scopes` (`scope_conflicts` and `Conflict` are importable from here too,
as are `glob_overlap` and `normalize_glob` from `globs`).
"""
from __future__ import annotations

from _collections import deque
from _heapq import heappop, heappush
from itertools import chain, repeat
from _operator import lt

from .globs import glob_overlap, normalize_glob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["Conflict", "StepLinks", "critical_path", "dependents", "find_cycle", "glob_overlap",
           "longest_paths", "normalize_glob", "remaining_path", "scope_conflicts", "topological_order"]


# --- order and paths -------------------------------------------------------------------------------

class IndexedGraph:
    """`deps` over integer node numbers (file order), with both edge directions in flat arrays.

    Flat lists of ints (CSR form) instead of a list per node: far fewer objects for the garbage
    collector to trace, which matters at 100 000 nodes.
    """

    __slots__ = ("names", "pos", "dep_at", "deps", "user_at", "users")

    def __init__(self, deps: Mapping[str, Sequence[str]], order: Sequence[str]) -> None:
        pos: dict[str, int] = {}
        for node in order:
            pos.setdefault(node, len(pos))
        for node in deps:
            pos.setdefault(node, len(pos))
        n = len(pos)
        self.names = sorted(pos, key=pos.__getitem__)
        self.pos = pos
        dep_count = [0] * (n + 1)
        user_count = [0] * (n + 1)
        edges: list[int] = []                 # flattened (node, dependency) pairs
        for node, ds in deps.items():
            i = pos[node]
            for d in ds:
                j = pos.get(d)
                if j is not None:
                    edges.append(i)
                    edges.append(j)
                    dep_count[i + 1] += 1
                    user_count[j + 1] += 1
        for i in range(n):
            dep_count[i + 1] += dep_count[i]
            user_count[i + 1] += user_count[i]
        self.dep_at, self.user_at = dep_count, user_count
        self.deps = [0] * len(edges[::2])
        self.users = [0] * len(self.deps)
        dep_fill, user_fill = dep_count[:-1], user_count[:-1]
        for e in range(0, len(edges), 2):
            i, j = edges[e], edges[e + 1]
            self.deps[dep_fill[i]] = j
            dep_fill[i] += 1
            self.users[user_fill[j]] = i
            user_fill[j] += 1

    def topo(self) -> list[int]:
        """Kahn's algorithm with a heap keyed by file position; ValueError on a cycle."""
        n = len(self.names)
        users, user_at, dep_at = self.users, self.user_at, self.dep_at
        return _kahn([dep_at[i + 1] - dep_at[i] for i in range(n)],
                     lambda i: users[user_at[i]:user_at[i + 1]],
                     lambda: {self.names[i]: [self.names[d] for d in self.deps[dep_at[i]:dep_at[i + 1]]]
                              for i in range(n)})


def _kahn(unmet: list[int], users: Callable[[int], Iterable[int]],
          graph: Callable[[], Mapping[str, Sequence[str]]]) -> list[int]:
    """Topological order of nodes 0..n-1 from their dependency counts (`unmet`, consumed) and their
    users; ties by node number. ValueError naming a cycle of `graph()` when there is one."""
    heap = [i for i, k in enumerate(unmet) if k == 0]     # ascending, so already a heap
    out: list[int] = []
    while heap:
        i = heappop(heap)
        out.append(i)
        for u in users(i):
            unmet[u] -= 1
            if unmet[u] == 0:
                heappush(heap, u)
    if len(out) != len(unmet):
        cycle = find_cycle(graph())
        raise ValueError("dependency cycle: " + " -> ".join(cycle or ["?"]))
    return out


class StepLinks:
    """The dependency graph over file positions, made once per workstream (`Workstream.links`) for
    the scheduler and the path passes: `pos` (id -> position), `deps[i]` (the ids step i depends
    on), `dependents[i]` (the positions of the steps that depend on step i, ascending) and `topo()`
    (a topological order of the positions).

    Built with C-level map/all over the flattened edges: with 100 000 steps a Python loop over the
    300 000 edges costs more than everything done with the result. Dependencies must be known ids
    (`KeyError` otherwise), as in any validated workstream.
    """

    __slots__ = ("ids", "pos", "deps", "dependents", "in_file_order")

    def __init__(self, ids: Sequence[str], deps: Sequence[Sequence[str]],
                 pos: dict[str, int] | None = None) -> None:
        """`pos`, when given, must be `ids` numbered in order (the loader has it already)."""
        n = len(ids)
        self.ids = ids
        self.pos = pos = dict(zip(ids, range(n))) if pos is None else pos
        flat = list(map(pos.__getitem__, chain.from_iterable(deps)))
        owners = list(chain.from_iterable(map(repeat, range(n), map(len, deps))))
        users: list[list[int]] = [[] for _ in range(n)]
        deque(map(list.append, map(users.__getitem__, flat), owners), maxlen=0)
        self.dependents = users
        self.deps = deps
        # nearly every file lists a step after its dependencies: then file order is topological
        # (and there is no cycle)
        self.in_file_order = all(map(lt, flat, owners))

    def topo(self) -> Sequence[int]:
        """Dependencies first; among steps ready together, file order. ValueError on a cycle."""
        if self.in_file_order:
            return range(len(self.ids))
        return _kahn(list(map(len, self.deps)), self.dependents.__getitem__,
                     lambda: dict(zip(self.ids, self.deps)))

    def longest_paths(self, took: Sequence[float]) -> tuple[list[float], list[int]]:
        """Each step's remaining path (its duration in `took`, by position, plus the longest
        remaining path among its dependents) and the critical path, as positions: it starts at the
        first step with the longest remaining path and follows, at each step, the first dependent
        with the longest one. One backward pass; each step's maximum is found in C."""
        n = len(took)
        rp = [0.0] * n
        nxt = [-1] * n
        users, get = self.dependents, rp.__getitem__
        for i in reversed(self.topo()):
            us = users[i]
            if us:
                k = nxt[i] = max(us, key=get)         # the first of the longest (us is ascending)
                top = rp[k]
                rp[i] = took[i] + top if top > 0.0 else took[i]
            else:
                rp[i] = took[i]
        path: list[int] = []
        if n:
            cur = max(range(n), key=get)
            while cur >= 0:
                path.append(cur)
                cur = nxt[cur]
        return rp, path


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
    Files nearly always list a step after its dependencies, and when every edge points back to an
    earlier node there is no cycle: that is checked first, in C (map/all over the flattened edges),
    in a fraction of the time of the search.
    """
    pos = {node: i for i, node in enumerate(deps)}
    owners = chain.from_iterable(map(repeat, range(len(pos)), map(len, deps.values())))
    targets = map(pos.__getitem__, chain.from_iterable(deps.values()))
    try:
        if all(map(lt, targets, owners)):
            return None
    except KeyError:
        pass                               # an unknown dependency: the search below skips it
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
    g = IndexedGraph(deps, order)
    return [g.names[i] for i in g.topo()]


def longest_paths(deps: Mapping[str, Sequence[str]], order: Sequence[str],
                  durations: Mapping[str, float | None], default: float = 1.0
                  ) -> tuple[dict[str, float], list[str]]:
    """Every step's remaining path (see `remaining_path`) and the critical path, in one pass.

    The critical path starts at the step whose remaining path is longest and follows, at each step,
    the dependent whose remaining path is longest (ties: file order). `StepLinks.longest_paths`
    over the ids of `order` and then of `deps`; unknown dependencies are left out.
    """
    names = list(dict.fromkeys(chain(order, deps)))
    lists = [deps.get(name, ()) for name in names]
    try:
        links = StepLinks(names, lists)
    except KeyError:                           # an unknown dependency: the graph drops it
        known = set(names)
        links = StepLinks(names, [[d for d in ds if d in known] for ds in lists])
    took = [default if d is None else float(d) for d in map(durations.get, names)]
    rp, path = links.longest_paths(took)
    return dict(zip(names, rp)), [names[i] for i in path]


def remaining_path(deps: Mapping[str, Sequence[str]], order: Sequence[str],
                   durations: Mapping[str, float | None], default: float = 1.0) -> dict[str, float]:
    """For every step, the longest chain of durations from it (itself included) to the graph's end,
    through its dependents: how much work at least still follows once it starts."""
    return longest_paths(deps, order, durations, default)[0]


def critical_path(deps: Mapping[str, Sequence[str]], order: Sequence[str],
                  durations: Mapping[str, float | None], default: float = 1.0
                  ) -> tuple[list[str], float]:
    """The longest chain of dependent steps by total duration, and that total (ties: file order)."""
    rp, path = longest_paths(deps, order, durations, default)
    return path, (rp[path[0]] if path else 0.0)


def __getattr__(name: str) -> Any:
    """`scope_conflicts` and `Conflict`, which live in `scopes` (it imports this module)."""
    if name in ("scope_conflicts", "Conflict"):
        from . import scopes
        return getattr(scopes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
