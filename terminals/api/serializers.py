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


class PaneSerializer(serializers.Serializer):
    session_name = serializers.CharField(source="session")
    tmux_session = serializers.CharField()
    sandbox_id = serializers.CharField()
    window_index = serializers.IntegerField()
    window_id = serializers.CharField()
    window_name = serializers.CharField()
    pane_index = serializers.IntegerField()
    pane_id = serializers.CharField()
    pane_pid = serializers.IntegerField()
    pane_title = serializers.CharField()
    pane_width = serializers.IntegerField()
    pane_height = serializers.IntegerField()
    active = serializers.BooleanField()
    dead = serializers.BooleanField()
    current_path = serializers.CharField()


# --- files -----------------------------------------------------------------------------------


class PathSerializer(StrictInputSerializer):
    path = serializers.CharField(max_length=4096, trim_whitespace=False)


class ReadFileSerializer(PathSerializer):
    from_line = serializers.IntegerField(min_value=1, default=1)
    max_lines = serializers.IntegerField(min_value=1, required=False)


class WriteFileSerializer(PathSerializer):
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    mode = serializers.RegexField(r"^0?[0-7]{3,4}$", required=False)
    create_dirs = serializers.BooleanField(default=False)
    overwrite = serializers.BooleanField(default=True)


class EditFileSerializer(PathSerializer):
    old_text = serializers.CharField(trim_whitespace=False)
    new_text = serializers.CharField(allow_blank=True, trim_whitespace=False)
    all = serializers.BooleanField(default=False)


class DeleteFileSerializer(PathSerializer):
    recursive = serializers.BooleanField(default=False)


class UploadQuerySerializer(PathSerializer):
    mode = serializers.RegexField(r"^0?[0-7]{3,4}$", required=False)
    create_dirs = serializers.BooleanField(default=False)
    overwrite = serializers.BooleanField(default=True)
