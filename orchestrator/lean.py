"""JSON and regular expressions for the modules on the path of `run` and `validate`, without
importing `json` or `re` until something unusual needs them.

`json` imports `re`, `re` imports `enum`, and with `signal` (whose wrapper is made of enums) they
are ~5 ms of every command's start-up on the reference machine, a sixth of a one-step run. The C
pieces under `json` (`_json`: the scanner and the encoder) need none of them, so:

- `loads` reads JSON with `_json`'s scanner, exactly as `json.loads` does; on any error it asks
  `json.loads` itself, so an error is the package's own (`json.JSONDecodeError`, same message and
  position). `decode_error()` is that class, for an `except` clause (evaluated only on an error).
- `json_encoder` builds `_json`'s C encoder once (`json.JSONEncoder(...).encode` builds it at every
  call), and `dumps` is `json.dumps` on it; `quote_ascii` and `quote` are `_json`'s string quoting.
- `Pattern` is a regular expression compiled (and `re` imported) on its first use. The hot checks
  of a run (ids, plain cells) are written without one where they are.

Likewise `threading` imports `functools` and `collections` (and they `operator`, `keyword`,
`reprlib`, `types`...): ~3 ms more. These modules use their C halves (`_thread`, `_functools`,
`_collections`, `_collections_abc`, `_operator`, `_heapq`: the same objects the packages export),
and here:

- `Thread`: what they ask of `threading.Thread` (started at once, `is_alive`, `join`) on `_thread`.
- `memo`: `functools.lru_cache` (a dict; when bounded and full it starts again).
- `once`: `functools.cached_property` (computed on first access, kept in the instance's dict).
"""
from __future__ import annotations

import _json
import _thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

quote_ascii = _json.encode_basestring_ascii
quote = _json.encode_basestring

_WS = " \t\n\r"

# `string.ascii_lowercase` and friends (`string` imports `re`)
LOWER = "abcdefghijklmnopqrstuvwxyz"
UPPER = LOWER.upper()
DIGITS = "0123456789"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """The attributes `_json.make_scanner` reads of a `json.JSONDecoder`."""
    __slots__ = ("strict", "object_hook", "object_pairs_hook", "parse_float", "parse_int",
                 "parse_constant", "memo")

    def __init__(self, parse_float, parse_int, parse_constant, object_pairs_hook):
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = object_pairs_hook
        self.parse_float = parse_float or float
        self.parse_int = parse_int or int
        self.parse_constant = parse_constant or _CONSTANTS.__getitem__
        self.memo: dict = {}


def loads(text: str, *, parse_constant: Callable[[str], Any] | None = None,
          parse_float: Callable[[str], Any] | None = None, parse_int: Callable[[str], Any] | None = None,
          object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """`json.loads(text, ...)` for a str; what the hooks raise passes through unchanged."""
    if type(text) is str and not text.startswith("\ufeff"):
        start = len(text) - len(text.lstrip(_WS))
        scan = _json.make_scanner(_Context(parse_float, parse_int, parse_constant, object_pairs_hook))
        try:
            value, end = scan(text, start)
        except StopIteration:
            pass
        except ValueError as e:
            if not isinstance(e, decode_error()):
                raise
        else:
            if not text[end:].strip(_WS):
                return value
    import json   # malformed, or not a str: the package's own answer (and error)
    return json.loads(text, parse_constant=parse_constant, parse_float=parse_float,
                      parse_int=parse_int, object_pairs_hook=object_pairs_hook)


def decode_error() -> type[ValueError]:
    """`json.JSONDecodeError` (importing `json.decoder` only now)."""
    from json.decoder import JSONDecodeError
    return JSONDecodeError


def _fail(obj: Any) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


def json_encoder(*, default: Callable[[Any], Any], ensure_ascii: bool = True,
                 separators: tuple[str, str] = (", ", ": "), sort_keys: bool = False,
                 check_circular: bool = False) -> Callable[[Any], str]:
    """`json.JSONEncoder(...).encode` with the C encoder built once (~2.5 us of each line of a
    summary). No check for circular references unless asked: our own records have none."""
    chunks = _json.make_encoder({} if check_circular else None, default,
                                quote_ascii if ensure_ascii else quote, None, separators[1],
                                separators[0], sort_keys, False, True)
    return lambda obj: "".join(chunks(obj, 0))


def dumps(obj: Any, *, separators: tuple[str, str] = (", ", ": "),
          default: Callable[[Any], Any] | None = None) -> str:
    """`json.dumps(obj, separators=..., default=...)` (ASCII, no indent)."""
    if type(obj) is str:
        return quote_ascii(obj)
    return json_encoder(default=default or _fail, separators=separators, check_circular=True)(obj)


class Pattern:
    """`re.compile(pattern)` on first use (flags inline in the pattern, as `(?i)`): the methods of
    the compiled expression, which it then is for good."""
    __slots__ = ("pattern", "_rx")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._rx = None

    def compiled(self) -> Any:
        rx = self._rx
        if rx is None:
            import re
            rx = self._rx = re.compile(self.pattern)
        return rx

    def __getattr__(self, name: str) -> Any:   # search, fullmatch, sub, finditer, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.compiled(), name)


class Thread:
    """`threading.Thread(target=target, args=args, daemon=True).start()`: a thread the interpreter
    does not wait for at exit (whoever needs it finished joins it)."""
    __slots__ = ("_running",)

    def __init__(self, target: Callable[..., Any], *args: Any):
        self._running = _thread.allocate_lock()
        self._running.acquire()
        _ALIVE.add(self._running)
        _thread.start_new_thread(self._run, (target, args))

    def _run(self, target: Callable[..., Any], args: tuple) -> None:
        try:
            target(*args)
        finally:
            _ALIVE.discard(self._running)
            self._running.release()

    def is_alive(self) -> bool:
        return self._running.locked()

    def join(self) -> None:
        with self._running:
            pass


_ALIVE: set = set()   # the locks of the `Thread`s not yet ended (from their start, which `_count` is not)


def others_running() -> bool:
    """Is any thread but this one alive (`threading.active_count() > 1`, for threads of both kinds)?"""
    return bool(_ALIVE) or _thread._count() > 0


def memo(maxsize: int | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`functools.lru_cache(maxsize)` for functions of hashable positional arguments."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        cache: dict = {}

        def cached(*args: Any) -> Any:
            try:
                return cache[args]
            except KeyError:
                pass
            value = fn(*args)
            if maxsize is not None and len(cache) >= maxsize:
                cache.clear()
            cache[args] = value
            return value
        cached.__name__, cached.__doc__, cached.__wrapped__ = fn.__name__, fn.__doc__, fn
        return cached
    return wrap


class once:
    """`functools.cached_property`: `fn(self)` on first access, then the instance's own attribute."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value
