"""Path parameters, validated in one place: the URL patterns. An id that is not of its kind
matches no route, so it is the resolver's 404 in the API's error shape (config/middleware.py),
never a lookup that raises. Use these in `lookup_value_regex` and `re_path`s, and
`<vsb_uuid:...>` (registered by core's AppConfig) in `path()` routes."""

# A UUID as Python's uuid.UUID reads it: 32 hex digits, with or without the four hyphens.
UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
# A positive sequence number (audit events), at most 18 digits (a bigint).
SEQ = r"[0-9]{1,18}"


class UUIDConverter:
    """`<vsb_uuid:name>` in a path(): `UUID` above, passed on as the string it was."""

    regex = UUID

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value) -> str:
        return str(value)


def register() -> None:
    from django.urls import register_converter

    register_converter(UUIDConverter, "vsb_uuid")
