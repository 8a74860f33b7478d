"""The API keeps its own schema: schemathesis (pinned in requirements-dev.txt) sends generated
requests for every operation of /api/schema/ to a real daphne server with a real Celery worker
behind it (fake hypervisor driver: the fuzzer's creates cost no VM; see conftest.py), as an
agent and as an operator, and every answer must keep the contract:

- no server error (500);
- no status the operation does not document;
- every body as the schema documents it (content type and JSON schema);
- every error in the one shape, `{"error": {"code", "message", "fields"}}`.

Bounded and reproducible: `EXAMPLES` per operation and run, derandomized. The totals (cases,
failures by kind, with examples) are printed; the run's time too."""

from __future__ import annotations

import os

import pytest
from schemathesis import GenerationMode

from . import fuzz

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(600),
]

# Examples per operation of the main run; the others take fewer. 15 keeps the module near
# 3 minutes on a busy 2-core machine (25: about 3,700 cases, 5 minutes there); a longer hunt
# by hand: VSB_FUZZ_EXAMPLES=100.
EXAMPLES = int(os.environ.get("VSB_FUZZ_EXAMPLES", "15"))
# (persona, generation mode, examples per operation, path parameters of real rows?)
RUNS = [
    # An agent, valid requests on its own rows: past the 404s, into the services.
    ("agent", GenerationMode.POSITIVE, EXAMPLES, True),
    # An agent, invalid requests (bodies, queries and ids the schema excludes).
    ("agent", GenerationMode.NEGATIVE, max(1, EXAMPLES * 2 // 5), False),
    # An operator, valid requests: past the 403/404 of operator-only routes.
    ("operator", GenerationMode.POSITIVE, max(1, EXAMPLES // 5), True),
]

# The blocking ask waits (up to the stack's 2 s approval timeout) for a decision by design.
CAPS = {"POST /api/v1/human/ask": 3}

# Which real row a path parameter names, by the path's first segment after the version.
SEEDED = {
    ("sandboxes", "id"): "sandbox",
    ("sandboxes", "sandbox_id"): "sandbox",
    ("sandboxes", "snapshot_name"): "snapshot",
    ("approvals", "id"): "approval",
    ("human", "request_id"): "approval",
    ("operations", "id"): "operation",
    ("inventories", "id"): "inventory",
    ("audit", "seq"): "seq",
}


def seeds_of(contract_stack):
    def seeds(path: str, names: list[str]) -> dict[str, str] | None:
        collection = [part for part in path.split("/") if part and part not in ("api", "v1")][0]
        found = {n: SEEDED.get((collection, n)) for n in names}
        if not all(found.values()):
            return None
        return {n: contract_stack.seeds[row] for n, row in found.items()}

    return seeds


def test_it_answers_every_generated_request_as_its_schema_says(contract_stack, capsys):
    tally = fuzz.fuzz(contract_stack.url, RUNS, contract_stack.keys, seeds_of(contract_stack), CAPS)
    with capsys.disabled():
        print("\n" + tally.report())
    assert tally.cases >= 1000, tally.report()
    assert {kind: tally.total(kind) for kind in fuzz.KINDS} == dict.fromkeys(fuzz.KINDS, 0), (
        tally.report()
    )
