"""The optional webhook on new requests: a signed POST a chat bot or pager can act on.

Signature: `X-VSB-Signature: sha256=<hex>` where hex = HMAC-SHA256(secret, f"{timestamp}.{body}")
and timestamp is the `X-VSB-Timestamp` header; receivers reject old timestamps to stop replays."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request


class WebhookError(Exception):
    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def deliver(url: str, secret: str, event: str, payload: dict, timeout: float = 10) -> int:
    body = json.dumps({"event": event, "request": payload}, sort_keys=True).encode()
    timestamp = str(int(time.time()))
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("X-VSB-Event", event)
    req.add_header("X-VSB-Timestamp", timestamp)
    if secret:
        req.add_header("X-VSB-Signature", signature(secret, timestamp, body))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        raise WebhookError(f"webhook answered {err.code}", transient=err.code >= 500) from err
    except OSError as err:
        raise WebhookError(f"webhook unreachable: {err}", transient=True) from err
