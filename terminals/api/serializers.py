from __future__ import annotations

from rest_framework import serializers

from sandboxes.api.serializers import StrictInputSerializer


class CreateSessionSerializer(StrictInputSerializer):
    aliases = {"session_name": "name"}
    name = serializers.RegexField(r"^[A-Za-z0-9_-]{1,64}$", default="main")
    cols = serializers.IntegerField(min_value=10, max_value=1000, required=False)
    rows = serializers.IntegerField(min_value=5, max_value=500, required=False)
    window_name = serializers.CharField(max_length=64, required=False, default="")
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
    session_name = serializers.RegexField(r"^[A-Za-z0-9_-]{1,64}$", default="main")
    window_name = serializers.CharField(max_length=64, required=False, default="")
    new_window = serializers.BooleanField(default=False)
    horizontal = serializers.BooleanField(default=False)
    pane_id = serializers.CharField(max_length=100, required=False, help_text="Pane to split.")
    sandbox_id = serializers.UUIDField(required=False)
    command = serializers.CharField(required=False, allow_blank=True)

    def validate_command(self, value):
        if value:
            raise serializers.ValidationError("Panes always run a shell in the sandbox.")
        return value


class PaneTargetSerializer(StrictInputSerializer):
    pane_id = serializers.CharField(max_length=100)
    sandbox_id = serializers.UUIDField(required=False)


class SendKeysSerializer(StrictInputSerializer):
    pane_id = serializers.CharField(max_length=100, required=False)
    sandbox_id = serializers.UUIDField(required=False)
    text = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        default="",
        help_text="Typed literally, byte for byte (newlines included).",
    )
    key = serializers.CharField(
        required=False, help_text="One tmux key name (the original's field): Enter, C-c, Up..."
    )
    keys = serializers.ListField(
        child=serializers.CharField(max_length=32),
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
        if key is not None:
            if attrs.pop("literal"):
                attrs["text"] = attrs.get("text", "") + key
            else:
                attrs["keys"] = [key, *attrs.get("keys", [])]
        else:
            attrs.pop("literal")
        return attrs


class ReadPaneSerializer(StrictInputSerializer):
    pane_id = serializers.CharField(max_length=100, required=False)
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
