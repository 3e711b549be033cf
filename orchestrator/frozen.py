"""Plain records without `dataclasses`: `@record` classes, frozen by default, for the model and the
few small value types of the core.

Why not `dataclasses`: on CPython 3.11 `@dataclass` compiles each generated method (`__init__`,
`__repr__`, `__eq__`, `__hash__`, `__setattr__`, `__delattr__`) from source with `exec` when the module
is imported, ~1 ms a class, and `dataclasses` imports `inspect` (with `ast`, `dis`, `tokenize`): ~25 ms
of every command's start-up for the 18 classes on the run path, more than loading and checking a
10 000-step workstream. Here the methods are shared functions that read the class's field table, so a
class costs what a plain class costs.

What a record offers is what this project used of dataclasses: fields in declaration order (from the
class annotations) with defaults and `factory(...)` defaults, positional or keyword construction,
`repr`, field-wise `==` and (frozen) `hash`, `FrozenInstanceError` on assignment, pickling, and the
module functions `fields(cls)` and `replace(obj, **changes)`. (Classes that want `__slots__`, as the
scheduler's per-step state, are written by hand.)
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar
    T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class factory:
    """A default made anew for every instance: `env: dict = factory(dict)`."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]):
        self.make = make


_MISSING = object()


def record(cls: type | None = None, *, frozen: bool = True):
    """Make `cls` a record (see the module doc). `frozen=False`: fields may be assigned."""
    def wrap(c: type) -> type:
        return _make(c, frozen)
    return wrap if cls is None else wrap(cls)


def fields(cls_or_obj: Any) -> tuple[str, ...]:
    """The field names, in declaration order."""
    return cls_or_obj.__record_fields__


def defaults(cls: type) -> dict[str, Any]:
    """The plain (non-factory) defaults, by field name."""
    return dict(cls.__record_defaults__)


def replace(obj: T, **changes: Any) -> T:
    """A copy of `obj` with some fields changed (as `dataclasses.replace`)."""
    cls = type(obj)
    unknown = changes.keys() - cls.__record_set__
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    new = object.__new__(cls)
    # straight into the instance dict, past a frozen __setattr__
    new.__dict__.update({n: getattr(obj, n) for n in cls.__record_fields__}, **changes)
    return new


def _make(cls: type, frozen: bool) -> type:
    names: list[str] = []
    for base in reversed(cls.__mro__[1:]):
        for name in getattr(base, "__record_fields__", ()):
            if name not in names:
                names.append(name)
    own = [n for n in cls.__dict__.get("__annotations__", {})
           if not n.startswith("__") and n not in names]
    names.extend(own)
    plain: dict[str, Any] = dict(getattr(cls, "__record_defaults__", {}))
    made: dict[str, Callable[[], Any]] = dict(getattr(cls, "__record_factories__", {}))
    for name in own:
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, factory):
            made[name] = value.make
        elif value is not _MISSING:
            plain[name] = value
    table = dict(__record_fields__=tuple(names), __record_set__=frozenset(names),
                 __record_defaults__=plain, __record_factories__=made, __init__=_init,
                 __repr__=_repr, __eq__=_eq, __match_args__=tuple(names))
    if frozen:
        table.update(__setattr__=_frozen_set, __delattr__=_frozen_del, __hash__=_hash)
    else:
        table["__hash__"] = None   # mutable and compared by value: unhashable, as dataclasses does
    for own_method in ("__init__", "__repr__", "__eq__"):  # written by the class: its own wins
        if own_method in cls.__dict__:
            del table[own_method]
    for name in made:  # factory defaults live in the table, not on the class
        if name in cls.__dict__:
            delattr(cls, name)
    for key, value in table.items():
        setattr(cls, key, value)
    return cls


def _init(self, *args: Any, **kwargs: Any) -> None:
    # the hot path is a few C-level dict operations (specs and results are made once a step): the
    # plain defaults, then the positional and keyword values, then fresh factory defaults
    cls = type(self)
    names = cls.__record_fields__
    values = dict(cls.__record_defaults__)
    if args:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments, "
                            f"got {len(args)}")
        values.update(zip(names, args))
        if kwargs and not kwargs.keys().isdisjoint(names[:len(args)]):
            name = next(n for n in names[:len(args)] if n in kwargs)
            raise TypeError(f"{cls.__name__}() got the field twice {name!r}")
    if kwargs:
        values.update(kwargs)
    for name, make in cls.__record_factories__.items():
        if name not in values:
            values[name] = make()
    if len(values) != len(names) or (kwargs and not kwargs.keys() <= cls.__record_set__):
        unknown = [n for n in kwargs if n not in cls.__record_set__]
        if unknown:
            raise TypeError(f"{cls.__name__}() got no field {unknown[0]!r}")
        missing = next(n for n in names if n not in values)
        raise TypeError(f"{cls.__name__}() missing the argument {missing!r}")
    self.__dict__.update(values)      # past a frozen __setattr__


def _values(self) -> tuple[Any, ...]:
    return tuple(getattr(self, n) for n in type(self).__record_fields__)


def _repr(self) -> str:
    cls = type(self)
    return f"{cls.__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in cls.__record_fields__)})"


def _eq(self, other: Any) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self) -> int:
    return hash(_values(self))


def _frozen_set(self, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _frozen_del(self, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
