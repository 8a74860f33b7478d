"""How an audit event is hashed: a canonical JSON of its fields plus the previous hash."""

from __future__ import annotations

import hashlib
import json

GENESIS = "0" * 64

HASHED_FIELDS = (
    "seq",
    "created_at",
    "actor",
    "actor_user_id",
    "source_ip",
    "request_id",
    "verb",
    "target_type",
    "target_id",
    "sandbox_id",
    "agent",
    "data",
)


def canonical(fields: dict) -> bytes:
    values = {}
    for name in HASHED_FIELDS:
        value = fields.get(name)
        if name == "created_at" and value is not None and not isinstance(value, str):
            value = value.isoformat(timespec="microseconds")
        elif name == "sandbox_id" and value is not None:
            value = str(value).replace("-", "")
        values[name] = value
    return json.dumps(values, sort_keys=True, separators=(",", ":"), default=str).encode()


def event_hash(prev_hash: str, fields: dict) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(fields)).hexdigest()


def sha256_text(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()
