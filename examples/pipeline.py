"""Callables of the ws-example-diamond workstream: fetch -> (left, right) -> join.

Each is called in a worker as `fn(*args, **kwargs, inputs=inputs)`, where `inputs` maps every
dependency's step id to that step's output (its JSON-serialisable return value).
"""
from __future__ import annotations

from typing import Any, Mapping


def fetch(start: int, stop: int, step: int = 1) -> list[int]:
    """The numbers of range(start, stop, step): the data the other steps work on."""
    if step == 0:
        raise ValueError("step must not be zero")
    return list(range(start, stop, step))


def left(*, inputs: Mapping[str, Any]) -> list[int]:
    """Square every number that `fetch` produced."""
    return [n * n for n in inputs["fetch"]]


def right(factor: int = 2, *, inputs: Mapping[str, Any]) -> list[int]:
    """Multiply every number that `fetch` produced by `factor`."""
    return [n * factor for n in inputs["fetch"]]


def join(*, inputs: Mapping[str, Any]) -> dict[str, int]:
    """Sum both branches: `total` of all their numbers and `count` of numbers seen."""
    numbers = [*inputs["left"], *inputs["right"]]
    return {"total": sum(numbers), "count": len(numbers)}
