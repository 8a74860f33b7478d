"""Manifest: survives JSON and gzip unchanged, and a real-sized one fits a database row."""

from __future__ import annotations

import subprocess

import pytest

from diffing import Manifest, ManifestError, collector_script, compare, parse

FILES = 6000


def test_it_round_trips_through_json_and_gzip(guest):
    manifest = guest.collect().with_hashes({"/etc/motd": "ab" * 32})
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert Manifest.from_gzip(manifest.to_gzip()) == manifest
    assert "/etc/new\nline" in Manifest.from_json(manifest.to_json()).files


def test_it_keeps_names_that_are_not_utf8(tmp_path):
    (tmp_path / "caf\xe9".encode("latin-1").decode("utf-8", "surrogateescape")).write_text("x")
    out = subprocess.run(
        ["sh", "-c", collector_script(root=str(tmp_path))], capture_output=True, check=True
    ).stdout
    manifest = parse(out)
    name = "/caf\udce9"
    assert name in manifest.files
    assert Manifest.from_json(manifest.to_json()).files[name] == manifest.files[name]
    manifest.to_json().encode("ascii")  # storable as text anywhere


def test_it_refuses_a_manifest_of_another_version():
    with pytest.raises(ManifestError, match="version"):
        Manifest.from_json('{"v": 99}')


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    """6,000 entries laid out like /usr/share/doc: the size of a small Debian guest."""
    root = tmp_path_factory.mktemp("big")
    for i in range(FILES // 4):
        doc = root / "usr/share/doc" / f"package-number-{i:04d}"
        doc.mkdir(parents=True)
        for name in ("copyright", "changelog.Debian.gz", "README.Debian"):
            (doc / name).write_text(name)
    return root


def test_it_fits_a_guest_sized_manifest_well_under_a_megabyte(big_tree):
    out = subprocess.run(
        ["sh", "-c", collector_script(root=str(big_tree))], capture_output=True, check=True
    ).stdout
    manifest = parse(out)
    assert len(manifest.files) >= FILES
    assert len(manifest.to_json()) < 600_000
    assert len(manifest.to_gzip()) < 100_000
    assert compare(manifest, Manifest.from_gzip(manifest.to_gzip())).empty
