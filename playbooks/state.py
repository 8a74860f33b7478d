"""What the generator needs from the `to` state beyond the diff: full file contents, which
files each package owns (and their shipped md5s), the .deb files a package can be installed
from, and /etc/skel. Read from a private copy of the snapshot by the guest reader
(drivers/guest_reader_job.py: job_target_state), which never follows a guest symlink and
opens only regular files."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field


@dataclass
class DebFile:
    path: str  # in the guest
    package: str
    version: str
    arch: str


@dataclass
class TargetState:
    """Facts about the `to` state, all keyed by guest paths."""

    contents: dict[str, bytes] = field(default_factory=dict)
    too_large: dict[str, int] = field(default_factory=dict)
    owned: dict[str, set[str]] = field(default_factory=dict)  # package -> paths
    shipped_md5: dict[str, str] = field(default_factory=dict)  # path -> md5 as packaged
    debs: list[DebFile] = field(default_factory=list)
    skel_sha256: dict[str, str] = field(default_factory=dict)  # path relative to /etc/skel
    group_names: dict[int, str] = field(default_factory=dict)  # gid -> name in /etc/group

    @classmethod
    def from_answer(cls, answer: dict) -> TargetState:
        """From the guest reader's `target_state` job (drivers/guest_reader_job.py)."""
        return cls(
            contents={p: base64.b64decode(v) for p, v in answer["contents"].items()},
            too_large=dict(answer["too_large"]),
            owned={name: set(paths) for name, paths in answer["owned"].items()},
            shipped_md5=dict(answer["shipped_md5"]),
            debs=[DebFile(**d) for d in answer["debs"]],
            skel_sha256=dict(answer["skel_sha256"]),
            group_names={int(gid): name for gid, name in answer["group_names"].items()},
        )


def read_target_state(
    reader, image: str, diff: dict, *, inline_limit: int, file_limit: int
) -> TargetState:
    """Everything the generator needs from the `to` state, read from a private copy of its
    disk by the unprivileged guest reader (never by this process)."""
    answer = reader.run(
        "target_state",
        {"diff": diff, "inline_limit": inline_limit, "file_limit": file_limit},
        [image],
    )
    return TargetState.from_answer(answer)


def snapshot_pair(playbook) -> tuple:
    """The playbook's two snapshots; an error naming the one deleted since."""
    for side in ("from", "to"):
        if getattr(playbook, f"{side}_snapshot") is None:
            name = getattr(playbook, f"{side}_name")
            raise RuntimeError(
                f"snapshot {name!r} ({side}) was deleted; ask for the playbook again"
            )
    return playbook.from_snapshot, playbook.to_snapshot
