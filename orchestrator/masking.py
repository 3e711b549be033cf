"""Secret masking: values of variables whose names look secret never reach a file under .worktrees.

A variable is secret when its name contains TOKEN, SECRET, PASSWORD, PASSWD, KEY or CREDENTIAL (as CI
systems decide). Its value, when at least 4 characters long, is replaced by `***` in step logs (by the
worker, as output streams), in orchestrator.log, and in every string of state and summary files.
"""
from __future__ import annotations

from .lean import Pattern

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping

SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")
SECRET_NAME = Pattern("(?i)" + "|".join(SECRET_WORDS))
MIN_SECRET_LEN = 4


def secret_values(envs: Iterable[Mapping[str, str]]) -> tuple[str, ...]:
    """The values to mask, longest first (so a secret containing another is masked whole)."""
    out = set()
    for env in envs:
        for k, v in env.items():
            if secret_name(k) and isinstance(v, str) and len(v) >= MIN_SECRET_LEN:
                out.add(v)
    return tuple(sorted(out, key=len, reverse=True))


def secret_name(name: str) -> bool:
    """`SECRET_NAME.search(name)`: by hand for an ASCII name (every usual one; no `re`, see `lean`)."""
    if name.isascii():
        upper = name.upper()
        return any(w in upper for w in SECRET_WORDS)
    return SECRET_NAME.search(name) is not None


def mask(text: str | None, secrets: tuple[str, ...]) -> str | None:
    if not text or not secrets:
        return text
    for s in secrets:
        text = text.replace(s, "***")
    return text


def mask_obj(obj: Any, secrets: tuple[str, ...]) -> Any:
    """Mask every string inside a JSON-like value (keys included); numbers stay numbers."""
    if not secrets:
        return obj
    if isinstance(obj, str):
        return mask(obj, secrets)
    if isinstance(obj, dict):
        return {mask(str(k), secrets): mask_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_obj(v, secrets) for v in obj]
    return obj
