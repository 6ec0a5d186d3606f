"""Locations like `toy://data/x.jsonl`: a scheme registry, resolved at the application boundary.

Library code receives plain paths (local files, Hub ids, `gs://` URLs). An application
registers the schemes it serves (the toy world registers `toy://`, building its assets on
demand) and resolves a config's paths once, before handing the config to the library:
`resolve_paths(config)` replaces every string in a (nested) dataclass or mapping whose
scheme is registered. Unregistered schemes pass through untouched (gs:// is orbax's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from stjax.errors import UserError

_SCHEMES: dict[str, Callable[[str], str]] = {}


def register_scheme(scheme: str, resolver: Callable[[str], str]) -> None:
    """resolver(rest) -> local path, for locations `scheme://rest`."""
    _SCHEMES[scheme] = resolver


def scheme_of(location: str) -> str | None:
    head, sep, _ = location.partition("://")
    return head if sep and head.isidentifier() else None


def resolve(location: str) -> str:
    """A registered scheme's location -> its local path; anything else unchanged."""
    scheme = scheme_of(location)
    if scheme is None or scheme not in _SCHEMES:
        if scheme == "toy":
            raise UserError(f"{location}: toy:// locations are served by the toy world (stjax.toy), which "
                            "this program did not load")
        return location
    return _SCHEMES[scheme](location[len(scheme) + 3:])


def resolve_paths(value: Any) -> Any:
    """A copy of a config (dataclasses, dicts, lists) with every registered location resolved."""
    if isinstance(value, str):
        return resolve(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: resolve_paths(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, dict):
        return {k: resolve_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_paths(v) for v in value)
    return value
