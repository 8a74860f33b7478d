"""The settings scripts/run.sh starts daphne and the worker with: DEBUG off, SECRET_KEY and a
separate credentials key taken from the environment or generated once into a 0700 directory
as 0600 files, reused by every later start and every process. Each start is a fresh Python
process importing the settings, exactly as daphne and the worker do."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import keyfiles
from playbooks import secrets as credentials
from tests.support import stack
from tests.support.stack import ROOT

SHOW_SETTINGS = """
import hashlib, json
from django.conf import settings as s
digest = lambda v: hashlib.sha256(v.encode()).hexdigest()
print(json.dumps({
    "debug": s.DEBUG,
    "secret_key": digest(s.SECRET_KEY),
    "credentials_key": digest(s.VSB_CREDENTIALS_KEY),
    "redis_url": s.REDIS_URL,
    "broker": s.CELERY_BROKER_URL,
    "results": s.CELERY_RESULT_BACKEND,
    "channels": s.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"],
    "allowed_hosts": s.ALLOWED_HOSTS,
}))
"""


def run_sh_settings_module() -> str:
    """The settings module scripts/run.sh exports when the caller set none."""
    text = (ROOT / "scripts" / "run.sh").read_text()
    match = re.search(r'DJANGO_SETTINGS_MODULE="\$\{DJANGO_SETTINGS_MODULE:-([\w.]+)\}"', text)
    assert match, "run.sh no longer names its settings module"
    return match.group(1)


def launch(data_dir: Path, **extra: str) -> subprocess.CompletedProcess:
    """One process start (daphne's, the worker's) from a fresh shell running run.sh."""
    env = stack.settingless_env(
        DJANGO_SETTINGS_MODULE=run_sh_settings_module(), VSB_DATA_DIR=str(data_dir), **extra
    )
    return subprocess.run(
        [sys.executable, "-c", SHOW_SETTINGS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(data_dir: Path, **extra: str) -> dict:
    """What the settings of a started process hold."""
    out = launch(data_dir, **extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def failed_start(data_dir: Path, **extra: str) -> str:
    """Why a process refused to start."""
    out = launch(data_dir, **extra)
    assert out.returncode != 0, out.stdout
    return out.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_text().strip().encode()).hexdigest()


def test_run_sh_starts_with_production_settings_and_debug_off(tmp_path):
    assert run_sh_settings_module() == "config.settings.production"
    assert start(tmp_path)["debug"] is False
    # A DJANGO_DEBUG left in the environment does not turn it back on.
    assert start(tmp_path, DJANGO_DEBUG="true")["debug"] is False


def test_the_keys_are_generated_once_0600_in_a_0700_directory_and_reused(tmp_path):
    data_dir, secrets_dir = tmp_path / "data", tmp_path / "data" / "secrets"
    data_dir.mkdir()
    data_dir.chmod(0o755)  # as scripts/bootstrap.sh leaves it
    first = start(data_dir)
    secret_key, credentials_key = secrets_dir / "django-secret-key", secrets_dir / "credentials-key"
    assert mode(secrets_dir) == 0o700
    assert mode(secret_key) == 0o600 and mode(credentials_key) == 0o600
    # The data directory itself stays enterable: QEMU (libvirt-qemu) reads the sandboxes'
    # disks under it.
    assert mode(data_dir) == 0o755
    assert first["secret_key"] == digest(secret_key)
    assert first["credentials_key"] == digest(credentials_key)
    assert first["secret_key"] != first["credentials_key"], "two separate keys"
    assert len(secret_key.read_text().strip()) >= 50
    inodes = (secret_key.stat().st_ino, credentials_key.stat().st_ino)

    second = start(data_dir)
    assert (second["secret_key"], second["credentials_key"]) == (
        first["secret_key"],
        first["credentials_key"],
    )
    assert (secret_key.stat().st_ino, credentials_key.stat().st_ino) == inodes, "not rewritten"
    assert sorted(p.name for p in secrets_dir.iterdir()) == ["credentials-key", "django-secret-key"]


def test_processes_starting_together_agree_on_one_key(tmp_path):
    """daphne and the worker start at the same moment on a fresh install."""
    path = tmp_path / "secrets" / "k"
    code = (
        "import importlib.util, sys, hashlib;"
        "spec = importlib.util.spec_from_file_location('keyfiles', 'config/keyfiles.py');"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print(hashlib.sha256(m.read_or_create(__import__('pathlib').Path(sys.argv[1]))"
        ".encode()).hexdigest())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    seen = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert seen == {digest(path)}
    assert [p.name for p in path.parent.iterdir()] == ["k"], "no temporary file left behind"


def test_keys_from_the_environment_win_and_nothing_is_generated_for_them(tmp_path):
    given = tmp_path / "given"
    given.write_text("my-own-secret-key-" + "x" * 40 + "\n")
    settings = start(
        tmp_path / "data", DJANGO_SECRET_KEY_FILE=str(given), VSB_CREDENTIALS_KEY="my-creds-key"
    )
    assert settings["secret_key"] == digest(given)
    assert settings["credentials_key"] == hashlib.sha256(b"my-creds-key").hexdigest()
    assert not (tmp_path / "data" / "secrets").exists()


def test_it_refuses_a_key_file_other_users_can_read_without_printing_it(tmp_path):
    start(tmp_path)
    key = tmp_path / "secrets" / "django-secret-key"
    key.chmod(0o644)
    error = failed_start(tmp_path)
    assert "django-secret-key" in error and "0644" in error
    assert key.read_text().strip() not in error


def test_it_refuses_a_secrets_directory_others_can_enter(tmp_path):
    (tmp_path / "secrets").mkdir(mode=0o755)
    (tmp_path / "secrets").chmod(0o755)
    assert "secrets directory" in failed_start(tmp_path)


def test_it_refuses_a_symlinked_key_file(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("planted\n")
    target.chmod(0o600)
    keyfiles.private_dir(tmp_path / "secrets")
    (tmp_path / "secrets" / "django-secret-key").symlink_to(target)
    with pytest.raises(keyfiles.KeyFileError):
        keyfiles.read_or_create(tmp_path / "secrets" / "django-secret-key")


def test_production_refuses_the_examples_insecure_secret_key(tmp_path):
    assert "insecure" in failed_start(tmp_path, DJANGO_SECRET_KEY="insecure-dev-key-change-me")


def test_rotating_secret_key_keeps_inventory_credentials_readable(settings):
    settings.SECRET_KEY = "the-old-secret-key"
    token = credentials.encrypt("-----BEGIN OPENSSH PRIVATE KEY-----")
    settings.SECRET_KEY = "a-rotated-secret-key"
    assert credentials.decrypt(token) == "-----BEGIN OPENSSH PRIVATE KEY-----"
    settings.VSB_CREDENTIALS_KEY = "another-credentials-key"
    with pytest.raises(credentials.CredentialError):
        credentials.decrypt(token)


def test_it_never_encrypts_credentials_under_an_empty_key(settings):
    settings.VSB_CREDENTIALS_KEY = ""
    with pytest.raises(ImproperlyConfigured):
        credentials.encrypt("secret")
