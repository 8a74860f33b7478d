"""core.hostapt reads the KVM host's apt sources from a root directory given to it; every test
writes its own made-up sources under tmp_path (no real mirror name appears here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core import hostapt
from core.hostapt import Entry

ROOT = Path(__file__).resolve().parents[2]
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEB822 = f"""\
Types: deb
# a comment inside a stanza
URIs: http://mirror-a.example/debian http://mirror-b.example:8080/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: {KEYRING}

Types: deb deb-src
URIs: https://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Signed-By: {KEYRING}
"""

VENDOR822 = """\
Types: deb
URIs: https://vendor-node.example/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/vendor-node.gpg
"""

VENDOR_KEY_BLOCK = """\
Types: deb
URIs: https://vendor-embedded.example/debian
Suites: bookworm
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGRfakekey
 -----END PGP PUBLIC KEY BLOCK-----
"""

ONE_LINE = """\
# the host's main sources
deb http://oneline.example/debian bookworm main non-free-firmware  # trailing comment
deb-src http://oneline.example/debian bookworm main
deb [ arch=amd64 signed-by=/usr/share/keyrings/vendor-sdk.gpg ] https://vendor-sdk.example/apt cloud-sdk-bookworm main
deb [signed-by=/usr/share/keyrings/vendor-docker.gpg] https://vendor-docker.example/linux/debian bookworm stable
deb https://nokey-vendor.example/debian bookworm stable
deb http://backports.example/debian bookworm-backports main
"""


def write(root: Path, rel: str, text: str) -> None:
    path = root / "etc" / "apt" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host with one-line, deb822, disabled and third-party sources."""
    write(tmp_path, "sources.list", ONE_LINE)
    write(tmp_path, "sources.list.d/debian.sources", DEB822)
    write(tmp_path, "sources.list.d/vendor-node.sources", VENDOR822)
    write(tmp_path, "sources.list.d/vendor-embedded.sources", VENDOR_KEY_BLOCK)
    write(
        tmp_path,
        "sources.list.d/old.list.disabled",
        "deb http://ignored.example/debian bookworm main\n",
    )
    write(
        tmp_path,
        "sources.list.d/bad name.list",
        "deb http://ignored.example/debian bookworm main\n",
    )
    (tmp_path / "etc" / "os-release").write_text('ID=debian\nVERSION_CODENAME="bookworm"\n')
    return tmp_path


def test_it_parses_one_line_entries_with_options_and_comments():
    entries = hostapt.parse_one_line(ONE_LINE, "sources.list")
    assert entries[0] == Entry(
        ("deb",),
        "http://oneline.example/debian",
        ("bookworm",),
        ("main", "non-free-firmware"),
        (),
        "sources.list",
    )
    assert entries[1].types == ("deb-src",)
    sdk = entries[2]
    assert sdk.uri == "https://vendor-sdk.example/apt"
    assert sdk.suites == ("cloud-sdk-bookworm",)
    assert sdk.signed_by == ("/usr/share/keyrings/vendor-sdk.gpg",)
    assert entries[3].signed_by == ("/usr/share/keyrings/vendor-docker.gpg",)
    assert len(entries) == 6


def test_it_skips_one_line_entries_that_do_not_parse():
    text = "deb\ndeb http://x.example/debian\ndeb [signed-by=/k.gpg http://x.example/d bookworm main\nrpm http://x.example/ bookworm main\n"
    assert hostapt.parse_one_line(text) == []


def test_it_parses_deb822_stanzas_one_entry_per_uri_and_skips_disabled_ones():
    entries = hostapt.parse_deb822(DEB822, "debian.sources")
    assert [e.uri for e in entries] == [
        "http://mirror-a.example/debian",
        "http://mirror-b.example:8080/debian",
        "https://security.example/debian-security",
    ]
    assert entries[0].suites == ("bookworm", "bookworm-updates")
    assert entries[0].components == ("main", "contrib")
    assert entries[0].signed_by == (KEYRING,)
    assert entries[2].types == ("deb", "deb-src")


def test_it_marks_an_embedded_key_block_as_such():
    (entry,) = hostapt.parse_deb822(VENDOR_KEY_BLOCK)
    assert entry.signed_by == ("<embedded>",)


def test_it_reads_the_files_apt_reads_in_apt_order(host: Path):
    uris = [e.uri for e in hostapt.host_sources(host)]
    assert uris[0] == "http://oneline.example/debian"  # sources.list first
    assert "http://mirror-a.example/debian" in uris
    assert not any("ignored.example" in u or "disabled.example" in u for u in uris)


def test_it_picks_only_debian_entries(host: Path):
    uris = {e.uri for e in hostapt.debian_sources("bookworm", host)}
    assert uris == {
        "http://oneline.example/debian",
        "http://backports.example/debian",
        "http://mirror-a.example/debian",
        "http://mirror-b.example:8080/debian",
        "https://security.example/debian-security",
    }


def test_without_a_codename_it_uses_the_hosts_own(host: Path):
    assert hostapt.host_codename(host) == "bookworm"
    assert hostapt.debian_sources(root=host) == hostapt.debian_sources("bookworm", host)


def test_entries_without_signed_by_count_only_for_the_codename_family_and_debian_components():
    def entry(suites, components=("main",), signed_by=()):
        return Entry(("deb",), "http://x.example/debian", suites, components, signed_by)

    for suites in [
        ("bookworm",),
        ("bookworm-updates",),
        ("bookworm-security",),
        ("bookworm-backports",),
        ("bookworm/updates",),
    ]:
        assert entry(suites).is_debian("bookworm"), suites
    assert not entry(("trixie",)).is_debian("bookworm")
    assert not entry(("bookworm", "nodistro")).is_debian("bookworm")
    assert not entry(("cloud-sdk-bookworm",)).is_debian("bookworm")
    assert not entry(("bookworm",), ("stable",)).is_debian("bookworm")
    assert not entry(("bookworm",)).is_debian(None)
    # Signed-By decides on its own: Debian's keyring in any suite, a vendor's never.
    assert entry(("trixie",), signed_by=(KEYRING,)).is_debian("bookworm")
    assert not entry(("bookworm",), signed_by=("/usr/share/keyrings/vendor.gpg",)).is_debian(
        "bookworm"
    )
    assert not entry(("bookworm",), signed_by=("<embedded>",)).is_debian("bookworm")


def test_mirror_hosts_lists_each_http_mirror_once_with_its_port(host: Path):
    write(host, "sources.list.d/local.list", "deb file:/srv/repo bookworm main\n")
    assert hostapt.mirror_hosts(host) == [
        ("oneline.example", 80),
        ("backports.example", 80),
        ("mirror-a.example", 80),
        ("mirror-b.example", 8080),
        ("security.example", 443),
    ]


def test_the_guest_sources_list_has_the_hosts_debian_lines_deb_only(host: Path):
    assert hostapt.guest_sources_list("bookworm", host).splitlines()[1:] == [
        "deb http://oneline.example/debian bookworm main non-free-firmware",
        "deb http://backports.example/debian bookworm-backports main",
        "deb http://mirror-a.example/debian bookworm main contrib",
        "deb http://mirror-a.example/debian bookworm-updates main contrib",
        "deb http://mirror-b.example:8080/debian bookworm main contrib",
        "deb http://mirror-b.example:8080/debian bookworm-updates main contrib",
        "deb https://security.example/debian-security bookworm-security main",
    ]


def test_a_host_on_another_release_lends_its_mirrors_under_the_guests_codename(tmp_path: Path):
    write(tmp_path, "sources.list.d/debian.sources", DEB822.replace("bookworm", "trixie"))
    text = hostapt.guest_sources_list("bookworm", tmp_path)
    assert "deb http://mirror-a.example/debian bookworm-updates main contrib" in text
    assert "deb https://security.example/debian-security bookworm-security main" in text
    assert "trixie" not in text
    assert hostapt.debootstrap_mirror("bookworm", tmp_path) == "http://mirror-a.example/debian"


def test_a_host_without_debian_sources_gives_nothing(tmp_path: Path):
    write(tmp_path, "sources.list.d/vendor-node.sources", VENDOR822)
    assert hostapt.guest_sources_list("bookworm", tmp_path) == ""
    assert hostapt.mirror_hosts(tmp_path) == []
    assert hostapt.debootstrap_mirror("bookworm", tmp_path) is None


def test_the_debootstrap_mirror_is_the_first_that_carries_the_release_itself(tmp_path: Path):
    write(
        tmp_path,
        "sources.list",
        "deb http://sec.example/debian-security bookworm-security main\n"
        "deb http://main.example/debian bookworm main\n",
    )
    assert hostapt.debootstrap_mirror("bookworm", tmp_path) == "http://main.example/debian"


def test_it_reads_the_apt_proxy_from_apt_config_output():
    dump = 'APT "";\nAcquire "";\nAcquire::http::Proxy "http://proxy.example:3142";\n'
    assert hostapt.parse_apt_proxy(dump) == "http://proxy.example:3142"
    assert hostapt.parse_apt_proxy('Acquire::http::Proxy "DIRECT";\n') is None
    assert hostapt.parse_apt_proxy('Acquire::http::Proxy::other.example "DIRECT";\n') is None
    assert hostapt.parse_apt_proxy('APT::Architecture "amd64";\n') is None


def test_it_runs_apt_config_without_a_shell_and_survives_its_failure(tmp_path: Path):
    fake = tmp_path / "apt-config"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = dump ] || exit 3\necho \'Acquire::http::Proxy "http://p.example:3128";\'\n'
    )
    fake.chmod(0o755)
    assert hostapt.apt_proxy([str(fake), "dump"]) == "http://p.example:3128"
    assert hostapt.apt_proxy([str(fake), "other"]) is None
    assert hostapt.apt_proxy([str(tmp_path / "missing")]) is None


# -I (isolated) is how the image build runs it; -m needs the checkout on sys.path.
@pytest.mark.parametrize("how", [["-I", "core/hostapt.py"], ["-m", "core.hostapt"]])
def test_the_command_line_prints_the_sources_list_and_the_mirror(host: Path, how: list[str]):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *how, "--root", str(host), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    done = cli("sources-list", "bookworm")
    assert done.returncode == 0, done.stderr
    assert done.stdout == hostapt.guest_sources_list("bookworm", host)
    assert cli("mirror", "bookworm").stdout == "http://oneline.example/debian\n"
    assert cli("hosts").stdout.splitlines()[-1] == "security.example:443"
    assert cli("nonsense").returncode == 2


def test_the_command_line_fails_clearly_without_debian_sources(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-I", "core/hostapt.py", "--root", str(tmp_path), "mirror", "bookworm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "no Debian mirror for bookworm" in done.stderr
