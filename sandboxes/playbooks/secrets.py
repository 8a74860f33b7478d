"""Inventory credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from
VSB_CREDENTIALS_KEY, or from Django's SECRET_KEY when that is not set. Rotating the key means
re-entering the credentials; nothing decrypts them outside the worker that uses them."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


class CredentialError(Exception):
    pass


def _fernet() -> Fernet:
    secret = getattr(settings, "VSB_CREDENTIALS_KEY", "") or settings.SECRET_KEY
    key = hashlib.sha256(b"virsh-sandbox inventory credentials\0" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode() if text else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as err:
        raise CredentialError(
            "the stored credential cannot be decrypted (VSB_CREDENTIALS_KEY or SECRET_KEY changed?)"
        ) from err
