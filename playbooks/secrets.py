"""Inventory credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from
VSB_CREDENTIALS_KEY, its own secret (generated into VSB_SECRETS_DIR by the settings when the
environment has none), never Django's SECRET_KEY: rotating SECRET_KEY keeps them readable.
Rotating the credentials key means re-entering the credentials; nothing decrypts them outside
the worker that uses them."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CredentialError(Exception):
    pass


def _fernet() -> Fernet:
    secret = settings.VSB_CREDENTIALS_KEY
    if not secret:
        raise ImproperlyConfigured("VSB_CREDENTIALS_KEY is empty")
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
            "the stored credential cannot be decrypted (VSB_CREDENTIALS_KEY changed?)"
        ) from err
