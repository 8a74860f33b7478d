"""The OpenAPI schema describes every answer of the terminal and file routes: each names a
serializer (a component), or raw bytes for a download."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def test_every_terminal_and_file_answer_is_a_serializer_in_the_schema(schema):
    ours = {
        (method.upper(), path): op
        for path, ops in schema["paths"].items()
        if path.startswith("/api/v1/tmux/") or "/terminals/" in path or "/files/" in path
        for method, op in ops.items()
    }
    assert len(ours) == 42, sorted(ours)  # 11 sandbox-scoped, 10 original, 21 files
    components = schema["components"]["schemas"]
    for key, op in ours.items():
        assert op.get("summary") and op.get("tags"), key
        ((code, answer),) = [(c, r) for c, r in op["responses"].items() if c.startswith("2")]
        ((media, body),) = answer["content"].items()
        if key[1].endswith("/files/download"):
            assert (media, body["schema"]["format"]) == ("application/octet-stream", "binary")
            continue
        ref = body["schema"]["$ref"].rsplit("/", 1)[1]
        assert media == "application/json" and components[ref]["properties"], (key, ref)
        assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/Error"
        ), key
