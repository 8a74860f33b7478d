"""The schema documents every status an operation answers (core.api.schema), and path ids are
checked by the URL patterns (core.api.paths): a malformed id is the error shape's 404, never
a lookup that raises. (tests/contract fuzzes the whole API for both.)"""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.generators import SchemaGenerator
from rest_framework.throttling import AnonRateThrottle

from core.api.errors import exception_handler
from core.api.schema import ERROR_STATUSES, errors
from core.api.serializers import ErrorSerializer
from sandboxes.api.views import VMListView

ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def paths():
    return SchemaGenerator().get_schema(request=None, public=True)["paths"]


def statuses(paths, route: str, method: str) -> set[int]:
    return {int(code) for code in paths[route][method]["responses"]}


def test_it_documents_what_any_route_of_a_kind_can_answer(paths):
    # Takes a body, needs a key, names a sandbox in its path: 400 415 401 403 404.
    assert {400, 401, 403, 404, 415} <= statuses(paths, "/v1/sandboxes/{id}/start/", "post")
    # No input, no path id: no 400, no 404 (429: the key's request rate, the settings'; 503:
    # any route while the database is not answering).
    assert statuses(paths, "/v1/vms", "get") == {200, 401, 403, 429, 503}
    # Open to anyone: no 401/403.
    assert statuses(paths, "/v1/health", "get") == {200, 503}


def test_an_action_documents_its_own_errors_in_the_one_shape(paths):
    create = paths["/v1/sandboxes/"]["post"]["responses"]
    assert {409, 502, 503, 504} <= {int(code) for code in create}
    capacity = create["503"]
    assert capacity["content"]["application/json"]["schema"] == ERROR_REF
    assert capacity["description"] == ERROR_STATUSES[503]


class OncePerMinute(AnonRateThrottle):
    rate = "1/min"


def test_a_throttled_view_documents_429(monkeypatch):
    def vms_statuses() -> set[int]:
        paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
        return statuses(paths, "/v1/vms", "get")

    monkeypatch.setattr(VMListView, "throttle_classes", [])
    assert 429 not in vms_statuses()
    monkeypatch.setattr(VMListView, "throttle_classes", [OncePerMinute])
    assert 429 in vms_statuses()


def test_errors_knows_only_described_statuses():
    assert errors(409, 503) == {409: ErrorSerializer, 503: ErrorSerializer}
    with pytest.raises(ValueError, match="418"):
        errors(418)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/v1/inventories/not-a-uuid/"),
        ("post", "/v1/approvals/0e581ef7-3923-4e6a-9dbb-d6741-2cb3b8/cancel/"),
        ("get", "/v1/sandboxes/abc/"),
        ("get", "/v1/sandboxes/abc/terminals/sessions"),
        ("get", "/v1/audit/x1/"),
        ("get", "/api/v1/human/pending/nope"),
    ],
)
def test_a_malformed_id_is_a_404_in_the_error_shape(alice, method, path):
    response = getattr(alice, method)(path, format="json")
    assert response.status_code == 404, response.content[:300]
    assert response.json() == {
        "error": {"code": "not_found", "message": "Not found.", "fields": {}}
    }


def test_a_model_field_refusing_a_value_is_a_400_naming_it():
    refused = DjangoValidationError({"sandbox": ["“x” is not a valid UUID."]})
    response = exception_handler(refused, {})
    assert response.status_code == 400
    assert response.data["error"]["fields"] == {"sandbox": ["“x” is not a valid UUID."]}


@pytest.mark.django_db
def test_an_audit_time_past_postgresqls_offsets_is_compared_in_utc(alice):
    response = alice.get("/v1/audit?since=2026-01-01T00:00:00%2B19:06")
    assert response.status_code == 200, response.content[:300]
    response = alice.get("/v1/audit?since=0001-01-01T00:00:00%2B19:00")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"since": ["is out of range."]}


@pytest.mark.django_db
def test_a_form_body_is_a_415_in_the_error_shape(alice):
    response = alice.post("/v1/sandboxes", {"agent_id": "x"}, format="multipart")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
