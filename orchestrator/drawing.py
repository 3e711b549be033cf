"""Pure renderers of a workstream's dependency graph: Mermaid (default) and Graphviz dot.

Node names are generated (`s0`, `s1`, ...) and the real step ids are quoted labels, so any id the
schema allows draws correctly in both languages.
"""
from __future__ import annotations

from .model import Workstream


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


def mermaid(ws: Workstream) -> str:
    names = {s.id: f"s{i}" for i, s in enumerate(ws.steps)}
    lines = ["flowchart TD"]
    for s in ws.steps:
        lines.append(f'    {names[s.id]}["{_label(s.id)}"]')
    for s in ws.steps:
        for d in s.depends_on:
            lines.append(f"    {names[d]} --> {names[s.id]}")
    return "\n".join(lines)


def dot(ws: Workstream) -> str:
    names = {s.id: f"s{i}" for i, s in enumerate(ws.steps)}
    lines = [f'digraph "{_label(ws.id)}" {{', "    rankdir=TB;",
             '    node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica"];']
    for s in ws.steps:
        lines.append(f'    {names[s.id]} [label="{_label(s.id)}"];')
    for s in ws.steps:
        for d in s.depends_on:
            lines.append(f"    {names[d]} -> {names[s.id]};")
    lines.append("}")
    return "\n".join(lines)
