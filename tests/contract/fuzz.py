"""The schema-driven fuzzer of the contract ring, as a library: `fuzz()` sends schemathesis'
generated requests for every operation of the OpenAPI schema to a live server and sorts every
answer that breaks the contract into one of `KINDS`. It does not stop at the first failure (a
plain `@schema.parametrize()` test would): the ring reports totals, by kind, with examples.

Bounded and reproducible: a fixed number of examples per operation and persona, Hypothesis
derandomized (same cases every run), no example database, no shrinking."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SERVER_ERROR = "server error"
SCHEMA_VIOLATION = "schema violation"
UNDOCUMENTED_STATUS = "undocumented status"
BAD_ERROR_SHAPE = "bad error shape"
TIMEOUT = "no answer in time"
KINDS = (SERVER_ERROR, SCHEMA_VIOLATION, UNDOCUMENTED_STATUS, BAD_ERROR_SHAPE, TIMEOUT)

REQUEST_TIMEOUT = 20.0
EXAMPLES_KEPT = 4
MAX_URL = 8192  # longer URLs are the HTTP server's to refuse (see fuzz_operation)  # examples of each kind and operation in the report


@dataclass
class Tally:
    """What one fuzz run found: cases sent, and the failures by kind and operation."""

    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0
    op_seconds: Counter = field(default_factory=Counter)
    not_negatable: list[str] = field(default_factory=list)
    http_seconds: float = 0.0  # waiting for answers
    check_seconds: float = 0.0  # checking them
    oversized: int = 0  # requests with URLs over MAX_URL that the server dropped

    def fail(self, kind: str, label: str, detail: str) -> None:
        self.failures[kind][label] += 1
        kept = self.examples[(kind, label)]
        if len(kept) < EXAMPLES_KEPT:
            kept.append(detail[:600])

    def total(self, kind: str) -> int:
        return sum(self.failures[kind].values())

    def report(self) -> str:
        lines = [
            f"fuzz: {self.cases} cases in {self.seconds:.1f} s (HTTP {self.http_seconds:.1f} s, "
            f"checks {self.check_seconds:.1f} s); statuses "
            + ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items())),
        ]
        lines.append(f"  URLs over {MAX_URL} bytes dropped by daphne: {self.oversized}")
        slowest = ", ".join(f"{label} {t:.1f} s" for label, t in self.op_seconds.most_common(6))
        lines.append(f"  slowest operations: {slowest}")
        for kind in KINDS:
            lines.append(f"  {kind}: {self.total(kind)}")
            for label, count in self.failures[kind].most_common():
                lines.append(f"    {count:4d}  {label}")
                lines.extend(f"          e.g. {ex}" for ex in self.examples[(kind, label)][:2])
        return "\n".join(lines)


def error_shape_problem(body) -> str:
    """Why `body` is not `{"error": {"code", "message", "fields"}}` ("" when it is)."""
    if not isinstance(body, dict) or set(body) - {"error", "approval"} or "error" not in body:
        return f"not an error object: {json.dumps(body)[:200]}"
    inner = body["error"]
    if not isinstance(inner, dict) or set(inner) != {"code", "message", "fields"}:
        return f"error has keys {sorted(inner) if isinstance(inner, dict) else type(inner)}"
    if not (isinstance(inner["code"], str) and inner["code"]):
        return "error.code is not a non-empty string"
    if not isinstance(inner["message"], str):
        return "error.message is not a string"
    fields = inner["fields"]
    if not isinstance(fields, dict) or not all(
        isinstance(v, list) and all(isinstance(m, str) for m in v) for v in fields.values()
    ):
        return f"error.fields is not {{name: [message]}}: {json.dumps(fields)[:200]}"
    return ""


def _check(case, response, check) -> str:
    """The failure message of one schemathesis check ("" when it passed)."""
    try:
        case.validate_response(response, checks=[check])
    except FailureGroup as group:
        return "; ".join(f"{f.title}: {f.message}"[:300] for f in group.exceptions)
    return ""


def classify(tally: Tally, label: str, case, response: requests.Response) -> None:
    tally.cases += 1
    tally.statuses[response.status_code] += 1
    what = f"{case.method} {response.request.path_url[:160]} -> {response.status_code}"
    if response.status_code == 500:
        tally.fail(SERVER_ERROR, label, f"{what}: {response.text[:200]}")
    undocumented = _check(case, response, status_code_conformance)
    if undocumented:
        tally.fail(UNDOCUMENTED_STATUS, label, f"{what}: {undocumented}")
    else:
        for check in (content_type_conformance, response_schema_conformance):
            problem = _check(case, response, check)
            if problem:
                tally.fail(SCHEMA_VIOLATION, label, f"{what}: {problem}")
                break
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text[:200]
        problem = error_shape_problem(body)
        if problem:
            sent = response.request
            tally.fail(
                BAD_ERROR_SHAPE,
                label,
                f"{what}: {problem} (sent headers {dict(sent.headers)}, body {sent.body!r:.200})",
            )


def fuzz_operation(
    tally: Tally,
    operation,
    *,
    base_url: str,
    key: str,
    mode: GenerationMode,
    examples: int,
    path_parameters: dict[str, str] | None = None,
) -> None:
    """`examples` generated requests of `operation` (in `mode`) with the API key `key`."""
    label = operation.label
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=strategy)
    def run(case):
        # The persona's key, whatever header the case generated.
        if case.headers:
            case.headers.pop("Authorization", None)
        sent = time.monotonic()
        try:
            response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT)
        except requests.Timeout:
            tally.cases += 1
            tally.fail(TIMEOUT, label, f"{case.method} {case.formatted_path}")
            return
        except requests.ConnectionError as exc:
            tally.cases += 1
            url = exc.request.url if exc.request is not None else ""
            if len(url) > MAX_URL:
                # daphne (twisted) closes the connection on a request line over 16 KiB.
                tally.oversized += 1
            else:
                tally.fail(SERVER_ERROR, label, f"{case.method} {url[:160]}: dropped ({exc})")
            return
        answered = time.monotonic()
        tally.http_seconds += answered - sent
        classify(tally, label, case, response)
        tally.check_seconds += time.monotonic() - answered

    try:
        run()
    except Unsatisfiable:
        # Negative mode on an operation with nothing to make invalid (no parameters, no body).
        tally.not_negatable.append(label)


def load_schema(base_url: str):
    return schemathesis.openapi.from_url(f"{base_url}/api/schema/?format=json")


def fuzz(
    base_url: str,
    runs: list[tuple[str, GenerationMode, int, bool]],
    keys: dict[str, str],
    seeds,
    caps: dict[str, int] | None = None,
) -> Tally:
    """Every operation of the live schema, once per (persona, mode, examples, seeded) of
    `runs`. A seeded run takes the path parameters from `seeds(path, names)` when it knows
    them all (real rows), others are generated. Operations that delete run last, so the
    seeded rows serve the others first. `caps`: fewer examples for the operations it names
    (by label), such as one that blocks for seconds by design."""
    schema = load_schema(base_url)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: (op.method.upper() == "DELETE", op.path, op.method))
    tally = Tally()
    started = time.monotonic()
    for persona, mode, examples, seeded in runs:
        for operation in operations:
            names = [p.name for p in operation.path_parameters]
            fixed = seeds(operation.path, names) if names and seeded else None
            op_started = time.monotonic()
            fuzz_operation(
                tally,
                operation,
                base_url=base_url,
                key=keys[persona],
                mode=mode,
                examples=min(examples, (caps or {}).get(operation.label, examples)),
                path_parameters=fixed,
            )
            tally.op_seconds[operation.label] += time.monotonic() - op_started
    tally.seconds = time.monotonic() - started
    return tally
