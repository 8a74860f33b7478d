"""`pip install ./sdk` in a fresh virtualenv: the client, CLI and MCP entry points come with
httpx alone, and nothing of the server (Django, libvirt, Celery, paramiko...)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.support.stack import ROOT

SERVER_DISTRIBUTIONS = {
    "django",
    "djangorestframework",
    "drf-spectacular",
    "libvirt-python",
    "celery",
    "channels",
    "daphne",
    "paramiko",
    "psycopg",
    "redis",
    "ansible-core",
    "libtmux",
}


def test_pip_install_of_the_sdk_pulls_in_no_server_dependency(tmp_path):
    # A copy, so the build leaves nothing in the source tree.
    source = tmp_path / "sdk"
    shutil.copytree(
        ROOT / "sdk", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m, json, sys\n"
            "import virsh_sandbox\n"
            "from virsh_sandbox import VirshSandbox, AsyncVirshSandbox\n"
            "print(json.dumps({\n"
            "  'installed': sorted(d.metadata['Name'].lower() for d in m.distributions()),\n"
            "  'requires': m.requires('virsh-sandbox'),\n"
            "  'modules': sorted(n for n in sys.modules if n.split('.')[0] in ('django', 'libvirt')),\n"
            "  'version': virsh_sandbox.__version__,\n"
            "}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(probe.stdout)
    installed = set(found["installed"])
    assert not installed & SERVER_DISTRIBUTIONS, installed & SERVER_DISTRIBUTIONS
    assert {"virsh-sandbox", "httpx"} <= installed
    assert "mcp" not in installed  # only with the [mcp] extra
    assert sorted(r.split(";")[0].split("<")[0].split(">")[0] for r in found["requires"]) == [
        "httpx",
        "mcp",
    ]
    assert any("extra ==" in r for r in found["requires"] if r.startswith("mcp"))
    assert found["modules"] == []

    version = subprocess.run(
        [str(venv / "bin" / "virsh-sandbox"), "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.strip() == f"virsh-sandbox {found['version']}"
    # Without the extra the MCP entry point says what to install instead of a traceback.
    mcp = subprocess.run(
        [str(venv / "bin" / "virsh-sandbox-mcp")], capture_output=True, text=True, timeout=60
    )
    assert mcp.returncode == 1 and "pip install 'virsh-sandbox[mcp]'" in mcp.stderr
