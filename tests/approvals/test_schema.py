"""The OpenAPI schema describes every answer of the approvals and audit routes: a component
with named fields, not a free-form object."""

from __future__ import annotations

import pytest

ROUTES = ("/v1/approvals", "/api/v1/human/", "/v1/audit")


@pytest.fixture(scope="module")
def schema():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def described(schema: dict, node: dict) -> bool:
    if "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    if node.get("type") == "array":
        return described(schema, node["items"])
    return node.get("type") == "string" or bool(node.get("properties"))


def test_every_answer_of_the_approvals_and_audit_routes_is_described(schema):
    checked, vague = 0, []
    for path, operations in schema["paths"].items():
        if not path.startswith(ROUTES):
            continue
        for method, op in operations.items():
            for code, response in op["responses"].items():
                if not code.startswith("2") or "content" not in response:
                    continue
                for content_type, body in response["content"].items():
                    checked += 1
                    if not described(schema, body["schema"]):
                        vague.append(f"{method.upper()} {path} {code} {content_type}")
    assert checked >= 15 and not vague, vague
