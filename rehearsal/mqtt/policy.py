"""AWS IoT policy evaluation for the rehearsal broker: explicit Deny wins, else some Allow must match.

Resources and actions match with IAM's wildcards (`*` any run of characters, `?` one). Policy
variables are resolved per connection (`${iot:Connection.Thing.ThingName}`, `${iot:ClientId}`,
`${iot:Connection.Thing.ThingTypeName}`, `${iot:Connection.Thing.Attributes[name]}`); a statement
naming a variable the connection cannot resolve matches nothing, as in IoT Core. `Condition`,
`NotAction` and `NotResource` are not emulated: such a statement never allows (and a Deny with a
Condition never denies), so a test never passes on a permission AWS might not grant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class Unresolved(Exception):
    """A policy variable this connection has no value for."""


@lru_cache(maxsize=4096)
def _pattern(glob: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob), re.S)


def _resolve(text: str, variables: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in variables:
            return variables[name]
        raise Unresolved(name)

    return _VARIABLE.sub(sub, text)


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def parse(document: str | dict) -> list[dict]:
    """The statements of a policy document (as moto stores it: JSON text, or already a dict)."""
    try:
        doc = json.loads(document) if isinstance(document, str) else document
    except ValueError:
        return []
    statements = doc.get("Statement", []) if isinstance(doc, dict) else []
    return [s for s in (statements if isinstance(statements, list) else [statements]) if isinstance(s, dict)]


def _matches(statement: dict, action: str, resource: str, variables: Mapping[str, str]) -> bool:
    if not any(_pattern(a.lower()).fullmatch(action.lower()) for a in _listed(statement.get("Action"))):
        return False
    for res in _listed(statement.get("Resource")):
        try:
            if _pattern(_resolve(res, variables)).fullmatch(resource):
                return True
        except Unresolved:
            continue
    return False


def allowed(statements: Iterable[dict], action: str, resource: str, variables: Mapping[str, str]) -> bool:
    """Whether the statements allow `action` on `resource` (an ARN) for a connection's variables."""
    allow = False
    for s in statements:
        effect = s.get("Effect")
        if effect == "Deny" and "Condition" not in s and _matches(s, action, resource, variables):
            return False
        if effect == "Allow" and not {"Condition", "NotAction", "NotResource"} & s.keys():
            allow = allow or _matches(s, action, resource, variables)
    return allow
