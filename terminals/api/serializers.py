"""What the terminal and file APIs take (strict input) and answer (one serializer per
answer, so the OpenAPI schema describes every body)."""

from __future__ import annotations

from rest_framework import serializers

from core.api.serializers import StrictInputSerializer

from ..tmux_driver import (
    SESSION_NAME_RE,
    SESSION_NAME_RULE,
    WINDOW_NAME_RE,
    WINDOW_NAME_RULE,
    valid_key_name,
)


def _name_field(pattern, rule: str, **kwargs) -> serializers.RegexField:
    """A name that becomes a tmux argument: the driver's pattern, whole string (no trimming:
    a trailing newline is an error, not something to strip quietly)."""
    return serializers.RegexField(
        rf"\A{pattern.pattern}\Z",
        trim_whitespace=False,
        error_messages={"invalid": f"{rule}."},
        help_text=f"{rule}.",
        **kwargs,
    )


def session_name_field(**kwargs) -> serializers.RegexField:
    return _name_field(SESSION_NAME_RE, SESSION_NAME_RULE, **kwargs)


def window_name_field(**kwargs) -> serializers.RegexField:
    return _name_field(WINDOW_NAME_RE, WINDOW_NAME_RULE, required=False, default="", **kwargs)


def pane_id_field(**kwargs) -> serializers.CharField:
    return serializers.CharField(
        max_length=100,
        trim_whitespace=False,
        help_text="`%3` or `session:window.pane`.",
        **kwargs,
    )


class CreateSessionSerializer(StrictInputSerializer):
    aliases = {"session_name": "name"}
    name = session_name_field(default="main")
    cols = serializers.IntegerField(min_value=10, max_value=1000, required=False)
    rows = serializers.IntegerField(min_value=5, max_value=500, required=False)
    window_name = window_name_field()
    sandbox_id = serializers.UUIDField(required=False)
    # The original ran an arbitrary command in the session; ours always runs ssh into the guest.
    command = serializers.CharField(required=False, allow_blank=True)

    def validate_command(self, value):
        if value:
            raise serializers.ValidationError(
                "Sessions always run a shell in the sandbox; type the command with send-keys."
            )
        return value


class CreatePaneSerializer(StrictInputSerializer):
    session_name = session_name_field(default="main")
    window_name = window_name_field()
    new_window = serializers.BooleanField(default=False)
    horizontal = serializers.BooleanField(default=False)
    pane_id = pane_id_field(required=False)
    sandbox_id = serializers.UUIDField(required=False)
    command = serializers.CharField(required=False, allow_blank=True)

    def validate_command(self, value):
        if value:
            raise serializers.ValidationError("Panes always run a shell in the sandbox.")
        return value


class PaneTargetSerializer(StrictInputSerializer):
    pane_id = pane_id_field()
    sandbox_id = serializers.UUIDField(required=False)


class SendKeysSerializer(StrictInputSerializer):
    pane_id = pane_id_field(required=False)
    sandbox_id = serializers.UUIDField(required=False)
    text = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        default="",
        help_text="Typed literally, byte for byte (newlines included).",
    )
    key = serializers.CharField(
        required=False,
        trim_whitespace=False,
        help_text="One tmux key name (the original's field): Enter, C-c, Up...",
    )
    keys = serializers.ListField(
        child=serializers.CharField(max_length=32, trim_whitespace=False),
        required=False,
        default=list,
        help_text="tmux key names, pressed after `text`.",
    )
    literal = serializers.BooleanField(
        default=False, help_text="Type `key` as literal text instead of looking up a key name."
    )
    enter = serializers.BooleanField(default=False, help_text="Press Enter at the end.")

    def validate(self, attrs):
        key = attrs.pop("key", None)
        bad = [k for k in attrs.get("keys", []) if not valid_key_name(k)]
        if bad:
            raise serializers.ValidationError({"keys": [f"unknown key name(s): {bad!r}."]})
        if key is not None:
            if attrs.pop("literal"):
                attrs["text"] = attrs.get("text", "") + key
            elif not valid_key_name(key):
                raise serializers.ValidationError({"key": [f"unknown key name {key!r}."]})
            else:
                attrs["keys"] = [key, *attrs.get("keys", [])]
        else:
            attrs.pop("literal")
        return attrs


class ReadPaneSerializer(StrictInputSerializer):
    pane_id = pane_id_field(required=False)
    sandbox_id = serializers.UUIDField(required=False)
    last_n_lines = serializers.IntegerField(min_value=1, required=False)


# --- answers: terminals ----------------------------------------------------------------------


_SANDBOX_HEX = "The sandbox's id as 32 hex digits."
_TMUX_NAME = "The session's name on the host's tmux server: vsb-<sandbox hex>-<name>."


class PaneSerializer(serializers.Serializer):
    session_name = serializers.CharField(source="session", help_text="Its session, as named.")
    tmux_session = serializers.CharField(help_text=_TMUX_NAME)
    sandbox_id = serializers.CharField(help_text=_SANDBOX_HEX)
    window_index = serializers.IntegerField()
    window_id = serializers.CharField(help_text="@N, unique on the host.")
    window_name = serializers.CharField()
    pane_index = serializers.IntegerField()
    pane_id = serializers.CharField(help_text="%N, unique on the host: what pane routes take.")
    pane_pid = serializers.IntegerField(help_text="Of the pane's ssh, on the host.")
    pane_title = serializers.CharField()
    pane_width = serializers.IntegerField()
    pane_height = serializers.IntegerField()
    active = serializers.BooleanField(help_text="The active pane of the active window.")
    dead = serializers.BooleanField(help_text="Its ssh ended; respawn starts a new one.")
    current_path = serializers.CharField()


class PaneCreatedSerializer(serializers.Serializer):
    pane_id = serializers.CharField()
    session_name = serializers.CharField(source="session")
    window_index = serializers.IntegerField()
    pane_index = serializers.IntegerField()
    pane = PaneSerializer(source="*")


class TerminalSessionSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    session_name = serializers.CharField(help_text="The same as name (the original's field).")
    tmux_session = serializers.CharField(help_text=_TMUX_NAME)
    sandbox_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    windows = serializers.IntegerField(help_text="0 when the tmux session is gone.")
    alive = serializers.BooleanField(help_text="Whether the tmux session still runs.")
    taken_over_by = serializers.CharField(
        allow_null=True, help_text="The operator typing in it; yours is refused meanwhile."
    )


class SessionRefSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    tmux_session = serializers.CharField(source="tmux_name", help_text=_TMUX_NAME)


# The two answers to a new session are of {"row": the TerminalSession, "pane": its first pane}.


class SessionCreatedSerializer(serializers.Serializer):
    session = SessionRefSerializer(source="row")
    session_id = serializers.CharField(source="row.id")
    session_name = serializers.CharField(source="row.name")
    pane = PaneSerializer()


class TmuxSessionCreatedSerializer(serializers.Serializer):
    session_id = serializers.CharField(source="row.id")
    session_name = serializers.CharField(source="row.name")
    sandbox_id = serializers.CharField(source="row.sandbox_id")
    pane_id = serializers.CharField(source="pane.pane_id")


class SessionKilledSerializer(serializers.Serializer):
    session_name = serializers.CharField()
    killed = serializers.BooleanField()
    was_alive = serializers.BooleanField(help_text="False: the tmux session was gone already.")


class SessionReleasedSerializer(serializers.Serializer):
    # Of the answer of services.kill_session.
    session_name = serializers.CharField()
    success = serializers.BooleanField(source="killed")


class WindowSerializer(serializers.Serializer):
    session_name = serializers.CharField(help_text="Its session, as named.")
    tmux_session = serializers.CharField(help_text=_TMUX_NAME)
    sandbox_id = serializers.CharField(help_text=_SANDBOX_HEX)
    window_id = serializers.CharField(help_text="@N, unique on the host.")
    window_index = serializers.IntegerField()
    window_name = serializers.CharField()
    panes = serializers.IntegerField(help_text="How many panes it has.")
    active = serializers.BooleanField()


class PaneReadSerializer(serializers.Serializer):
    pane_id = serializers.CharField()
    content = serializers.CharField()
    lines = serializers.IntegerField()
    sandbox_id = serializers.CharField(help_text=_SANDBOX_HEX)


def _answer(name: str, **fields: serializers.Field) -> type[serializers.Serializer]:
    """A serializer class of a few plain fields (named `name`, as the schema shows it)."""
    return type(f"{name}Serializer", (serializers.Serializer,), fields)


def _done(name: str, flag: str) -> type[serializers.Serializer]:
    """`{"pane_id": ..., <flag>: true}`: what a pane verb did."""
    return _answer(name, pane_id=serializers.CharField(), **{flag: serializers.BooleanField()})


PaneSentSerializer = _done("PaneSent", "sent")
PaneRespawnedSerializer = _done("PaneRespawned", "respawned")
PaneSelectedSerializer = _done("PaneSelected", "switched")
PaneKilledSerializer = _done("PaneKilled", "killed")

# The list answers: `{"panes": [...]}` and so on.
PaneListSerializer = _answer("PaneList", panes=PaneSerializer(many=True))
WindowListSerializer = _answer("WindowList", windows=WindowSerializer(many=True))
TerminalSessionListSerializer = _answer(
    "TerminalSessionList", sessions=TerminalSessionSerializer(many=True)
)


# --- files -----------------------------------------------------------------------------------


class FilePathSerializer(StrictInputSerializer):
    path = serializers.CharField(max_length=4096, trim_whitespace=False)


class ReadFileSerializer(FilePathSerializer):
    from_line = serializers.IntegerField(min_value=1, default=1)
    max_lines = serializers.IntegerField(min_value=1, required=False)


class WriteFileSerializer(FilePathSerializer):
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    mode = serializers.RegexField(r"^0?[0-7]{3,4}$", required=False)
    create_dirs = serializers.BooleanField(default=False)
    overwrite = serializers.BooleanField(default=True)


class EditFileSerializer(FilePathSerializer):
    old_text = serializers.CharField(trim_whitespace=False)
    new_text = serializers.CharField(allow_blank=True, trim_whitespace=False)
    all = serializers.BooleanField(default=False)


class DeleteFileSerializer(FilePathSerializer):
    recursive = serializers.BooleanField(default=False)


class UploadQuerySerializer(FilePathSerializer):
    mode = serializers.RegexField(r"^0?[0-7]{3,4}$", required=False)
    create_dirs = serializers.BooleanField(default=False)
    overwrite = serializers.BooleanField(default=True)


class _Resolved(serializers.Serializer):
    path = serializers.CharField(help_text="As asked.")
    resolved = serializers.CharField(help_text="Where it led in the guest (symlinks followed).")


class _FileAttributes(serializers.Serializer):
    type = serializers.CharField(help_text="directory, file, symlink or other.")
    size = serializers.IntegerField()
    mode = serializers.CharField(help_text="Octal, like 0644.")
    mtime = serializers.CharField(help_text="ISO 8601, UTC.")
    uid = serializers.IntegerField(allow_null=True)
    gid = serializers.IntegerField(allow_null=True)


class FileStatSerializer(_Resolved, _FileAttributes):
    pass


class _EntryName(serializers.Serializer):
    name = serializers.CharField()


class DirectoryEntrySerializer(_EntryName, _FileAttributes):
    pass


class DirectoryListingSerializer(_Resolved):
    entries = DirectoryEntrySerializer(many=True)
    truncated = serializers.BooleanField(help_text="True when the entry limit cut the listing.")


class _FileLines(_Resolved):
    content = serializers.CharField()
    total_lines = serializers.IntegerField()
    from_line = serializers.IntegerField()
    to_line = serializers.IntegerField()
    truncated = serializers.BooleanField()


class FileContentSerializer(_FileLines, _FileAttributes):
    pass


class FileWrittenSerializer(_Resolved):
    bytes_written = serializers.IntegerField()
    created = serializers.BooleanField()
    mode = serializers.CharField(help_text="Octal, like 0644.")


class FileEditedSerializer(_Resolved):
    replacements = serializers.IntegerField()
    diff = serializers.CharField()


class FileDeletedSerializer(_Resolved):
    deleted = serializers.BooleanField()
    was_dir = serializers.BooleanField()
