"""The SDK's models (sdk/virsh_sandbox/models.py) against the *response* schemas of the OpenAPI
(generated in-process): every field of a model that parses an answer is a property of that
answer's schema, of a compatible type. So a field the server never sends, or a field renamed on
the server, fails here. (The SDK's contract test, tests/sdk/test_contract.py, checks requests.)

Fields the server may add and the SDK does not model are fine: models keep them in `extra`."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from virsh_sandbox import models

# SDK model: the response components it parses (several when it parses more than one answer).
PARSES: dict[type, tuple[str, ...]] = {
    models.Host: ("Host",),
    models.HostStatus: ("HostStatus",),
    models.HostList: ("HostList",),
    models.SourceVM: ("SourceVM",),
    models.VMList: ("VMList",),
    models.Health: ("Health",),
    models.Sandbox: ("Sandbox",),
    models.Operation: ("Operation",),
    models.Command: ("Command",),
    models.Snapshot: ("Snapshot",),
    # create/start/stop/restore answer a SandboxOperation, GET a SandboxDetail.
    models.SandboxResponse: ("SandboxOperation", "SandboxDetail"),
    models.CommandResponse: ("CommandResult",),
    models.SnapshotResponse: ("SnapshotOperation",),
    models.FileChanges: ("DiffFiles",),
    models.Diff: ("Diff",),
    models.ApprovalRequest: ("Approval",),
    models.EgressRule: ("EgressRule",),
    models.EgressPolicy: ("EgressPolicy",),
    models.EgressRequest: ("EgressRequestAnswer",),
    models.EgressConnection: ("EgressConnection",),
    models.AuditEvent: ("AuditEvent",),
    models.Playbook: ("Playbook",),
    models.WriteResult: ("FileWritten",),
}
# List models: the SDK's `page()` makes them from a paginated answer, its `results` under
# the model's own name and `count` as `total`.
PAGES: dict[type, tuple[str, str]] = {
    models.SandboxList: ("PaginatedSandboxList", "sandboxes"),
    models.CommandList: ("PaginatedCommandList", "commands"),
    models.SnapshotList: ("PaginatedSnapshotList", "snapshots"),
    models.OperationList: ("PaginatedOperationList", "operations"),
    models.ApprovalList: ("PaginatedApprovalList", "approvals"),
    models.EgressConnectionList: ("PaginatedEgressConnectionList", "connections"),
    models.AuditEventList: ("PaginatedAuditEventList", "events"),
}
PAGE_FIELDS = {"total": "count"}
# Made by the SDK itself, never parsed from an answer (say why).
NOT_PARSED = {
    models.Record: "any answer, every field an attribute: no fields of its own",
    models.FileContent: "built from a download's raw bytes",
    models.FileChange: "the items of DiffFiles.results, a free-form object in the schema",
}
CLIENT_SIDE = {
    (models.WriteResult, "written"): "true once the write returned (the original SDK's field)",
}

SIMPLE = {str: {"string"}, int: {"integer"}, bool: {"boolean"}, float: {"number", "integer"}}


@pytest.fixture(scope="module")
def components() -> dict[str, dict]:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]


def resolve(schema: dict, components: dict) -> dict:
    """`schema` with its $ref (and a single allOf, as drf-spectacular wraps nullable refs)
    followed."""
    while True:
        if "$ref" in schema:
            schema = components[schema["$ref"].rsplit("/", 1)[-1]]
        elif len(schema.get("allOf", [])) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def json_types(schema: dict, components: dict) -> set[str]:
    """The JSON types a property may have ("object" for a nested serializer)."""
    schema = resolve(schema, components)
    for union in ("oneOf", "anyOf"):
        if union in schema:
            return set().union(*(json_types(s, components) for s in schema[union]))
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return set(kinds)
    if "properties" in schema:
        return {"object"}
    if "enum" in schema:
        return {type(v).__name__.replace("str", "string") for v in schema["enum"] if v}
    return set()  # free-form: any type


def expected_types(annotation) -> set[str] | None:
    """The JSON types an SDK field's annotation stands for; None when it takes anything."""
    if annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, __import__("types").UnionType):
        found: set[str] = set()
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            kinds = expected_types(arg)
            if kinds is None:
                return None
            found |= kinds
        return found
    if origin is list or annotation is list:
        return {"array"}
    if origin is dict or annotation is dict:
        return {"object"}
    if isinstance(annotation, type) and issubclass(annotation, models.Model):
        return {"object"}
    for python, kinds in SIMPLE.items():
        if annotation is python:
            return kinds
    return None


def sdk_fields(model: type) -> dict[str, Any]:
    """The model's fields as the JSON names them, with their annotations."""
    hints = typing.get_type_hints(model)
    renamed = {attr: name for name, attr in model._renames.items()}
    return {
        renamed.get(f.name, f.name): hints[f.name]
        for f in dataclasses.fields(model)
        if f.name != "extra" and (model, f.name) not in CLIENT_SIDE
    }


def mismatches(model: type, names: tuple[str, ...], components, renames=None) -> list[str]:
    properties: dict[str, dict] = {}
    for name in names:
        properties.update(resolve(components[name], components).get("properties", {}))
    problems = []
    for field_name, annotation in sdk_fields(model).items():
        sent_as = (renames or {}).get(field_name, field_name)
        if sent_as not in properties:
            problems.append(f"{model.__name__}.{field_name}: no property {sent_as!r} in {names}")
            continue
        wanted = expected_types(annotation)
        found = json_types(properties[sent_as], components)
        if wanted is not None and found and not (wanted & found):
            problems.append(
                f"{model.__name__}.{field_name}: the SDK reads {sorted(wanted)}, "
                f"the schema says {sorted(found)}"
            )
    return problems


def test_every_sdk_model_is_checked_or_said_why_not():
    every = {
        obj
        for obj in vars(models).values()
        if isinstance(obj, type)
        and issubclass(obj, models.Model)
        and obj.__module__ == models.__name__
    }
    covered = set(PARSES) | set(PAGES) | set(NOT_PARSED) | {models.Model, models.Page}
    assert every - covered == set()


@pytest.mark.parametrize("model", list(PARSES), ids=lambda m: m.__name__)
def test_the_sdk_model_reads_only_what_the_answer_documents(model, components):
    assert mismatches(model, PARSES[model], components) == []


@pytest.mark.parametrize("model", list(PAGES), ids=lambda m: m.__name__)
def test_the_sdk_list_reads_only_what_the_paginated_answer_documents(model, components):
    component, rows = PAGES[model]
    renames = {**PAGE_FIELDS, rows: "results"}
    assert mismatches(model, (component,), components, renames) == []


def test_it_catches_a_field_the_server_does_not_send(components):
    @dataclasses.dataclass(repr=False)
    class Renamed(models.Sandbox):
        sandbox_uuid: str | None = None

    assert mismatches(Renamed, ("Sandbox",), components) == [
        "Renamed.sandbox_uuid: no property 'sandbox_uuid' in ('Sandbox',)"
    ]


def test_it_catches_a_field_of_another_type(components):
    @dataclasses.dataclass(repr=False)
    class Retyped(models.Model):
        ssh_port: str | None = None

    assert mismatches(Retyped, ("Sandbox",), components) == [
        "Retyped.ssh_port: the SDK reads ['string'], the schema says ['integer']"
    ]
