"""The body of a FHIR operation invoked by POST: a ``Parameters`` resource (or none at all).

One reader for the operations that take simple named values, so that they all refuse a
malformed body alike (400 OperationOutcome): not JSON, not ``Parameters``, a parameter without
a name or without exactly one ``value[x]``, a name given twice.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from sharedcare.fhir.errors import BadRequest


async def read_parameters(request: Request) -> dict[str, Any]:
    """The operation's parameters by name (their ``value[x]``): a ``Parameters`` body or none."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict) or parsed.get("resourceType") != "Parameters":
        raise BadRequest("The operation takes a Parameters resource")
    out: dict[str, Any] = {}
    for p in parsed.get("parameter") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise BadRequest("Each parameter needs a name")
        values = [v for k, v in p.items() if k.startswith("value")]
        if len(values) != 1:
            raise BadRequest(f"Parameter {p['name']!r} needs exactly one value[x]")
        if p["name"] in out:
            raise BadRequest(f"Parameter {p['name']!r} is repeated")
        out[p["name"]] = values[0]
    return out
