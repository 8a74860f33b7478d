"""Diff two states of a guest: what an agent changed in files, packages, units and accounts.

In the guest (over SSH): `collector_script()` prints a metadata manifest, `hash_script()` and
`content_script()` fetch sha256 sums and small files for the paths that changed. On the host:
`parse()` it into a `Manifest` (JSON for a DB row), `compare()` two of them into a `Diff`.
No Django here: configuration arrives as arguments. See docs/diff.md.
"""

from .collector import (
    DEFAULT_EXCLUDES,
    DEFAULT_PATHS,
    batched,
    collector_script,
    content_script,
    hash_script,
    parse_contents,
    parse_hashes,
)
from .compare import TEXT_LIMIT, Diff, compare, paths_needing_contents, paths_needing_hashes
from .manifest import (
    FileEntry,
    Group,
    Manifest,
    ManifestError,
    Package,
    Unit,
    User,
    parse,
)

__all__ = [
    "DEFAULT_EXCLUDES",
    "DEFAULT_PATHS",
    "TEXT_LIMIT",
    "Diff",
    "FileEntry",
    "Group",
    "Manifest",
    "ManifestError",
    "Package",
    "Unit",
    "User",
    "batched",
    "collector_script",
    "compare",
    "content_script",
    "hash_script",
    "parse",
    "parse_contents",
    "parse_hashes",
    "paths_needing_contents",
    "paths_needing_hashes",
]
