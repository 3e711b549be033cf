"""The JSON Schema of a workstream: loading it, checking a document fast, explaining a failure.

`load_schema` returns the schemas shipped as package data. The loader applies the workstream schema
after interpolating `execution`, so `${env...}` strings (which the published schema accepts, for
editors) are refused there; `validators` holds that variant twice: `fast`, the subset of JSON Schema
the schema uses compiled into nested closures (about 20x faster than `jsonschema` on a big document,
and held to agree with it exactly by a property test), answers "valid?" on the path every valid
file takes, and `slow` (`jsonschema`) runs only to explain a document the fast check refused, one
step at a time on big files. `schema_issues` turns its errors into `Issue`s a person can act on
(every error, at its JSON path, with the expected type or values and a "did you mean"), and
`newline_ids` closes the one gap in the schema's patterns.
"""
from __future__ import annotations

import os
from itertools import chain, repeat
from _functools import partial
from _operator import contains, itemgetter, methodcaller

TYPE_CHECKING = False
if TYPE_CHECKING:  # jsonschema is imported when a document needs explaining: a valid file never pays
    from typing import Any, Callable, Iterable

    import jsonschema

from .document import Issue, did_you_mean, show
from .lean import DIGITS, LOWER, UPPER, Pattern, dumps, loads, memo, once
from .jsonpos import JPath

__all__ = ["ID_PATTERN", "ID_RULE", "load_schema", "newline_ids", "schema_issues", "validators"]

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
ID_RULE = ("use lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, "
           "at most 128 characters")


def _id_rule(first: str) -> Callable[[str], bool]:
    """`re.fullmatch("[<first>][<first>._-]{0,127}", x) is not None`, without a regular expression."""
    first_set, rest_set = frozenset(first), frozenset(first + "._-")
    return lambda x: 0 < len(x) <= 128 and x[0] in first_set and rest_set.issuperset(x)


is_id = _id_rule(LOWER + DIGITS)   # ID_PATTERN in full: every step id and dependency of a document


def _search(full: Callable[[str], bool]) -> Callable[[str], Any]:
    """The `search` of `^...$` for the pattern `full` matches (`$` also matches before a final
    newline, see `newline_ids`)."""
    return lambda x: True if full(x[:-1] if x[-1:] == "\n" else x) else None


_KNOWN_PATTERNS = {
    ID_PATTERN: lambda: _search(is_id),
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$": lambda: _search(_id_rule(LOWER + UPPER + DIGITS)),
}


def pattern_search(pattern: str) -> Callable[[str], Any]:
    """`re.compile(pattern).search`: the schema's id patterns by hand, any other compiled (and `re`
    imported) on its first use (see `lean`)."""
    known = _KNOWN_PATTERNS.get(pattern)
    if known is not None:
        return known()
    rx = Pattern(pattern)
    return lambda x: rx.search(x)


# --- the schemas ----------------------------------------------------------------------------------

def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema shipped as package data: "workstream" or "results_summary" (a fresh copy)."""
    import copy           # not on the path of a valid file: copy and weakref cost ~1 ms to import
    return copy.deepcopy(_schema(name))


@memo()
def _schema(name: str) -> dict[str, Any]:
    if name not in ("workstream", "results_summary"):
        raise ValueError(f"unknown schema {name!r}")
    file = f"{name}.schema.json"
    try:  # next to this module in an ordinary install; importlib.resources costs ~3 ms to start
        with open(os.path.join(os.path.dirname(__file__), "schemas", file), encoding="utf-8") as f:
            return loads(f.read())
    except OSError:  # e.g. imported from a zip
        from importlib import resources
        return loads((resources.files("orchestrator") / "schemas" / file)
                     .read_text(encoding="utf-8"))


class Validators:
    """The schema as the loader applies it: `execution` is interpolated first, so the `${env...}`
    strings the published schema accepts (for editors) are no longer acceptable values.

    `fast` and `fast_step` answer "valid?" quickly; `slow` (jsonschema) explains what is wrong.
    """

    def __init__(self) -> None:
        published = _schema("workstream")         # shared, read only: copy what changes
        schema = dict(published, **{"$defs": dict(published["$defs"], env_expr=False)})
        self._schema = schema
        compile_ = _compiler(schema)
        self.fast = compile_(schema)
        self.fast_step = compile_(schema["$defs"]["step"])

    @once
    def slow(self) -> "jsonschema.Draft202012Validator":
        import jsonschema
        return jsonschema.Draft202012Validator(self._schema)

    @once
    def slow_step(self) -> "jsonschema.Draft202012Validator":
        return self.slow.evolve(schema=self._schema["$defs"]["step"])


@memo()
def validators() -> Validators:
    """The one `Validators`, compiled on first use."""
    return Validators()


# --- the fast check -------------------------------------------------------------------------------

_ANNOTATIONS = {"description", "title", "$id", "$schema", "$defs", "default", "examples", "$comment"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    # JSON Schema counts 3.0 as an integer; jsonschema agrees, so the fast check must too.
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool))
    or (isinstance(x, float) and x.is_integer()),
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compiler(root: dict[str, Any]) -> Callable[[Any], Callable[[Any], bool]]:
    """Turn the subset of JSON Schema our schema uses into nested closures answering "valid?".

    About 20x faster than `jsonschema` on a big document. It must agree with `jsonschema` exactly
    (a property test checks it); a keyword it does not know makes it refuse to compile, and a
    document it rejects is explained by `jsonschema` anyway.
    """
    done: dict[int, Callable[[Any], bool]] = {}

    def resolve(ref: str) -> Any:
        if not ref.startswith("#/"):
            raise NotImplementedError(ref)
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def target(s: Any) -> Any:
        """`s` with wrappers that hold nothing but a `$ref` (and annotations) followed."""
        while isinstance(s, dict) and "$ref" in s and s.keys() - _ANNOTATIONS == {"$ref"}:
            s = resolve(s["$ref"])
        return s

    def shaped(s: Any, kind: str, keywords: set[str]) -> dict[str, Any] | None:
        """`s` (wrappers followed) when it is of type `kind` and uses no keyword beyond these."""
        s = target(s)
        if not isinstance(s, dict) or s.get("type") != kind or not s.keys() - _ANNOTATIONS <= keywords:
            return None
        return s

    def string_rules(s: Any) -> tuple[Callable[[str], Any] | None, int] | None:
        """(pattern search, minLength) when `s` is a string with nothing else to check."""
        s = shaped(s, "string", {"type", "pattern", "minLength"})
        if s is None:
            return None
        return (pattern_search(s["pattern"]) if "pattern" in s else None,
                s.get("minLength", 0))

    def string_list_rules(s: Any) -> tuple[int, Callable[[str], Any] | None, int] | None:
        """(minItems, pattern search, minLength) when `s` is a list of such strings and nothing else."""
        s = shaped(s, "array", {"type", "items", "minItems"})
        rules = None if s is None else string_rules(s.get("items", True))
        return None if rules is None else (s.get("minItems", 0), *rules)

    def strings(s: Any, one: Callable[..., bool], many: Callable[..., bool]
                ) -> Callable[[Any], bool] | None:
        """`one` for a string shape, `many` for a list of strings, with their rules; else None."""
        rules = string_rules(s)
        if rules is not None:
            return partial(one, *rules)
        list_rules = string_list_rules(s)
        return None if list_rules is None else partial(many, *list_rules)

    def fused(s: dict[str, Any]) -> Callable[[Any], bool] | None:
        """One closure for the common shapes (a string with a pattern, a list of such strings, an
        object of known properties): the type is tested once and lists are walked in C, where the
        general composition below calls a closure per keyword and per item."""
        keys = s.keys() - _ANNOTATIONS
        kind = s.get("type")
        quick = strings(s, _check_string, _check_strings)
        if quick is not None:
            return quick
        if kind == "array" and keys <= {"type", "items", "minItems"}:
            items = s.get("items", True)
            item_object = object_rules(items)
            if item_object is not None:      # the steps: checked a field at a time, in C
                required, props, extra = item_object
                return partial(_check_objects, s.get("minItems", 0), required,
                               {k: all_of(v) for k, v in props.items()},
                               None if extra is None else all_of(extra))
            return partial(_check_list, s.get("minItems", 0), comp(items))
        shape = object_rules(s)
        if shape is not None:
            required, props, extra = shape
            return partial(_check_dict, required, {k: comp(v) for k, v in props.items()},
                           None if extra is None else comp(extra))
        return None

    def object_rules(s: Any) -> tuple[tuple[str, ...], dict[str, Any], Any] | None:
        """(required, property schemas, additionalProperties or None) of an object of known
        properties with nothing else to check."""
        s = shaped(s, "object", {"type", "properties", "additionalProperties", "required"})
        if s is None:
            return None
        extra = s.get("additionalProperties", True)
        return tuple(s.get("required", ())), s.get("properties", {}), None if extra is True else extra

    def all_of(s: Any) -> Callable[[list[Any]], bool]:
        """"Is every value in this list valid?", with the loops in C for strings and lists of
        strings."""
        quick = strings(s, _all_strings, _all_string_lists)
        return quick if quick is not None else partial(_all_valid, comp(s))

    def comp(s: Any) -> Callable[[Any], bool]:
        if s is True:
            return lambda x: True
        if s is False:
            return lambda x: False
        if id(s) in done:
            return done[id(s)]
        quick = fused(s)
        if quick is not None:
            done[id(s)] = quick
            return quick
        checks: list[Callable[[Any], bool]] = []
        props = {k: comp(v) for k, v in s.get("properties", {}).items()}
        extra = s.get("additionalProperties", True)
        extra_f = None if extra is True else comp(extra)
        for kw, val in s.items():
            if kw in _ANNOTATIONS:
                continue
            if kw == "$ref":
                checks.append(comp(resolve(val)))
            elif kw == "type":
                kinds = [_TYPES[t] for t in ([val] if isinstance(val, str) else val)]
                checks.append(kinds[0] if len(kinds) == 1 else
                              (lambda x, k=kinds: any(f(x) for f in k)))
            elif kw in ("properties", "additionalProperties"):
                if kw == "properties" or "properties" not in s:
                    checks.append(partial(_check_object, props, extra_f))
            elif kw == "required":
                checks.append(lambda x, r=tuple(val): not isinstance(x, dict) or all(k in x for k in r))
            elif kw == "items":
                checks.append(partial(_check_items, comp(val)))
            elif kw == "minItems":
                checks.append(lambda x, n=val: not isinstance(x, list) or len(x) >= n)
            elif kw == "minLength":
                checks.append(lambda x, n=val: not isinstance(x, str) or len(x) >= n)
            elif kw == "pattern":
                search = pattern_search(val)
                checks.append(lambda x, f=search: not isinstance(x, str) or f(x) is not None)
            elif kw in ("enum", "const"):
                values = val if kw == "enum" else [val]
                if not all(isinstance(v, str) for v in values):
                    raise NotImplementedError(kw)
                allowed = frozenset(values)
                checks.append(lambda x, a=allowed: isinstance(x, str) and x in a)
            elif kw == "minimum":
                checks.append(lambda x, m=val: not _is_number(x) or x >= m)
            elif kw == "exclusiveMinimum":
                checks.append(lambda x, m=val: not _is_number(x) or x > m)
            elif kw == "anyOf":
                branches = [comp(b) for b in val]
                checks.append(lambda x, b=branches: any(f(x) for f in b))
            elif kw == "propertyNames":
                f = comp(val)
                checks.append(lambda x, f=f: not isinstance(x, dict) or all(f(k) for k in x))
            elif kw == "not":
                f = comp(val)
                checks.append(lambda x, f=f: not f(x))
            else:
                raise NotImplementedError(kw)

        if len(checks) == 1:
            check = checks[0]
        elif len(checks) == 2:
            first, second = checks
            check = lambda x: first(x) and second(x)  # noqa: E731  (the common case, kept flat)
        else:
            check = partial(_check_all, tuple(checks))
        done[id(s)] = check
        return check

    return comp


def _check_string(search: Callable[[str], Any] | None, min_length: int, x: Any) -> bool:
    return isinstance(x, str) and len(x) >= min_length and (search is None or search(x) is not None)


def _check_strings(min_items: int, search: Callable[[str], Any] | None, min_length: int,
                   x: Any) -> bool:
    return isinstance(x, list) and len(x) >= min_items and _all_strings(search, min_length, x)


def _all_strings(search: Callable[[str], Any] | None, min_length: int, values: list[Any]) -> bool:
    # map() keeps the loops in C; a Match is always true, so all(map(search, x)) tests each item.
    return (all(map(isinstance, values, repeat(str)))
            and (min_length <= 0 or min(map(len, values), default=min_length) >= min_length)
            and (search is None or all(map(search, values))))


def _all_string_lists(min_items: int, search: Callable[[str], Any] | None, min_length: int,
                      values: list[Any]) -> bool:
    return (all(map(isinstance, values, repeat(list)))
            and (min_items <= 0 or min(map(len, values), default=min_items) >= min_items)
            and _all_strings(search, min_length, list(chain.from_iterable(values))))


def _all_valid(check: Callable[[Any], bool], values: list[Any]) -> bool:
    return all(map(check, values))


def _check_objects(min_items: int, required: tuple[str, ...],
                   props: dict[str, Callable[[list[Any]], bool]],
                   extra: Callable[[list[Any]], bool] | None, x: Any) -> bool:
    """A list of objects of known properties, checked a property at a time over all the objects:
    the values of each key in one list, each list checked in C (100 000 steps: ~0.05 s, against
    ~0.3 s object by object)."""
    if not isinstance(x, list) or len(x) < min_items or not all(map(isinstance, x, repeat(dict))):
        return False
    for k in required:
        if not all(map(contains, x, repeat(k))):
            return False
    for k in dict.fromkeys(chain.from_iterable(x)):        # every key used, once
        check = props.get(k, extra)
        if check is not None and not check(
                list(map(itemgetter(k), filter(methodcaller("__contains__", k), x)))):
            return False
    return True


def _check_list(min_items: int, item: Callable[[Any], bool], x: Any) -> bool:
    return isinstance(x, list) and len(x) >= min_items and all(map(item, x))


def _check_dict(required: tuple[str, ...], props: dict[str, Callable[[Any], bool]],
                extra: Callable[[Any], bool] | None, x: Any) -> bool:
    if not isinstance(x, dict):
        return False
    for k in required:
        if k not in x:
            return False
    return _check_object(props, extra, x)


def _check_all(checks: tuple[Callable[[Any], bool], ...], x: Any) -> bool:
    for c in checks:
        if not c(x):
            return False
    return True


def _check_items(item: Callable[[Any], bool], x: Any) -> bool:
    if isinstance(x, list):
        for v in x:
            if not item(v):
                return False
    return True


def _check_object(props: dict[str, Callable[[Any], bool]], extra: Callable[[Any], bool] | None,
                  x: Any) -> bool:
    if not isinstance(x, dict):
        return True
    for k, v in x.items():
        f = props.get(k)
        if f is None:
            if extra is not None and not extra(v):
                return False
        elif not f(v):
            return False
    return True


# --- explaining a failure -------------------------------------------------------------------------

def schema_issues(data: Any) -> list[Issue]:
    """Every schema error in `data`, as issues at JSON paths; empty when it is valid."""
    v = validators()
    try:
        if v.fast(data):
            return []
    except NotImplementedError:
        pass
    errors: list[tuple[JPath, jsonschema.ValidationError]] = []
    steps = data.get("steps") if isinstance(data, dict) else None
    if isinstance(steps, list) and len(steps) > 1:
        # jsonschema needs seconds for 100 000 steps: explain only the steps the fast check refuses,
        # and the rest of the document with one stand-in step (so "at least one step" still holds).
        rest = dict(data, steps=[{"id": "x"}])
        errors += [((), e) for e in v.slow.iter_errors(rest)]
        for i, step in enumerate(steps):
            if not v.fast_step(step):
                errors += [(("steps", i), e) for e in v.slow_step.iter_errors(step)]
    else:
        errors += [((), e) for e in v.slow.iter_errors(data)]
    issues: list[Issue] = []
    seen: set[tuple[Any, str]] = set()
    for prefix, err in errors:
        for issue in _explain(err, v.slow.schema, prefix):
            if (issue.where, issue.message) not in seen:
                seen.add((issue.where, issue.message))
                issues.append(issue)
    return issues


def newline_ids(data: dict[str, Any]) -> list[Issue]:
    """The schema's patterns use `$`, which (in Python and so in jsonschema) also matches before a
    final newline; an id must not smuggle one in."""
    def places() -> Iterable[tuple[JPath, str]]:
        yield ("id",), data["id"]
        for i, s in enumerate(data["steps"]):
            yield ("steps", i, "id"), s["id"]
            for k, d in enumerate(s.get("depends_on", ())):
                yield ("steps", i, "depends_on", k), d
            if "callable" in s:
                yield ("steps", i, "callable"), s["callable"]
        for g, group in enumerate(data.get("step_groups", ())):
            yield ("step_groups", g, "id"), group["id"]
            for k, x in enumerate(group["steps"]):
                yield ("step_groups", g, "steps", k), x

    # A cheap first look, in C: no newline anywhere in the ids means none ends with one. The full
    # walk (which builds a path per value) runs only when there may be one.
    steps = data["steps"]
    flat = chain([data["id"]], map(itemgetter("id"), steps),
                 chain.from_iterable(map(methodcaller("get", "depends_on", ()), steps)))
    if "\n" not in "\0".join(flat) and not any(map(contains, steps, repeat("callable"))) \
            and "step_groups" not in data:
        return []
    return [Issue(f"invalid value {dumps(value)}: it ends with a newline", where)
            for where, value in places() if value.endswith("\n")]


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "an object", "null": "null"}


def _deref(schema: Any, root: dict[str, Any]) -> Any:
    while isinstance(schema, dict) and "$ref" in schema and schema["$ref"].startswith("#/"):
        node: Any = root
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _wanted(schema: Any, root: dict[str, Any]) -> str:
    s = _deref(schema, root)
    if not isinstance(s, dict):
        return "anything"
    if "const" in s:
        return dumps(s["const"])
    if "enum" in s:
        return "one of " + ", ".join(dumps(v) for v in s["enum"])
    t = s.get("type")
    if t == "array":
        items = _deref(s.get("items"), root)
        if isinstance(items, dict) and isinstance(items.get("type"), str):
            return f"a list of {items['type']}s"
    words = _TYPE_WORDS.get(t, "a value") if isinstance(t, str) else "a value"
    if "exclusiveMinimum" in s:
        words += f" greater than {s['exclusiveMinimum']}"
    elif "minimum" in s:
        words += f" of at least {s['minimum']}"
    return words


def _fits_type(schema: Any, root: dict[str, Any], value: Any) -> bool:
    s = _deref(schema, root)
    if not isinstance(s, dict):
        return s is not False
    if "type" in s:
        t = s["type"]
        return any(_TYPES[k](value) for k in ([t] if isinstance(t, str) else t))
    values = s.get("enum", [s["const"]] if "const" in s else None)
    if values is not None:
        return any(type(v) is type(value) for v in values)
    return True


def _explain(err: jsonschema.ValidationError, root: dict[str, Any], prefix: JPath = ()
             ) -> list[Issue]:
    """One jsonschema error as messages a person can act on (`prefix`: where its instance is)."""
    path: JPath = prefix + tuple(err.absolute_path)
    v, value, inst = err.validator, err.validator_value, err.instance
    if "propertyNames" in err.schema_path:   # a tool name; the error sits on the object
        if v == "not":
            return [Issue(f"'{inst}' is built in and cannot be redefined as a tool", path + (inst,),
                          at_key=True)]
        return [Issue(f"invalid tool name {dumps(inst)}: use letters, digits, '.', '_' or "
                      "'-', starting with a letter or digit", path + (inst,), at_key=True)]
    if v == "required":
        return [Issue(f"missing required property '{k}'", path) for k in value if k not in inst]
    if v == "additionalProperties" and value is False:
        known = list(err.schema.get("properties", {}))
        return [Issue(f"unexpected property '{k}'", path + (k,),
                      did_you_mean(k, known) or "allowed: " + ", ".join(known), at_key=True)
                for k in inst if k not in known]
    if v == "type":
        kinds = [value] if isinstance(value, str) else value
        return [Issue(f"expected {' or '.join(_TYPE_WORDS.get(k, k) for k in kinds)}, "
                      f"got {show(inst)}", path)]
    if v in ("enum", "const"):
        allowed = value if v == "enum" else [value]
        text = ", ".join(dumps(a) for a in allowed)
        hint = did_you_mean(inst, [str(a) for a in allowed]) if isinstance(inst, str) else None
        return [Issue(f"must be {'one of ' if len(allowed) > 1 else ''}{text}, got {show(inst)}",
                      path, hint)]
    if v == "pattern":
        if value == ID_PATTERN:
            return [Issue(f"invalid id {dumps(inst)}: {ID_RULE}", path)]
        if path and path[-1] == "callable":
            return [Issue(f"invalid callable {dumps(inst)}: expected "
                          '"package.module:function"', path)]
        return [Issue(f"{dumps(inst)} does not match the pattern {value}", path)]
    if v == "minItems":
        return [Issue("must not be empty" if value == 1 else f"must have at least {value} items",
                      path)]
    if v == "minLength":
        return [Issue("must not be empty", path)]
    if v == "minimum":
        return [Issue(f"must be at least {value}, got {show(inst)}", path)]
    if v == "exclusiveMinimum":
        return [Issue(f"must be greater than {value}, got {show(inst)}", path)]
    if v == "anyOf":
        branches = [(i, b) for i, b in enumerate(value) if _deref(b, root) is not False]
        by_branch: dict[int, list[jsonschema.ValidationError]] = {}
        for sub in err.context or ():
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [i for i, b in branches if _fits_type(b, root, inst)]
        if len(branches) == 1 or len(fitting) == 1:
            subs = by_branch.get(branches[0][0] if len(branches) == 1 else fitting[0], [])
            shallow = all(len(s.absolute_path) == len(err.absolute_path)
                          and s.validator in ("type", "const", "enum") for s in subs)
            if subs and (len(branches) == 1 or not shallow):
                return [issue for s in subs for issue in _explain(s, root, prefix)]
        wanted = " or ".join(_wanted(b, root) for _, b in branches)
        return [Issue(f"expected {wanted}, got {show(inst)}", path)]
    return [Issue(err.message, path)]
