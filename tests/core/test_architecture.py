"""The house rules the code itself can show (docs/architecture.md, "Layers"): services are the
only writers of rows, the apps import one another in one line and never in a circle, and the
API layer does not reach into the driver layer. Read from the source with `ast`, nothing is
imported, so these run in milliseconds and need no database."""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The apps in import order: each may import only those before it. `config` (settings, URLs,
# the Celery app, ASGI) is the project itself, on top: it may import any app (it is not
# scanned), and no app imports it.
APPS = [
    "core",
    "diffing",
    "audit",
    "accounts",
    "approvals",
    "egress",
    "sandboxes",
    "playbooks",
    "terminals",
]
ORDER = [*APPS, "config"]


@dataclass(frozen=True)
class Source:
    path: str  # relative to the repository root, with "/"
    module: str  # dotted name
    tree: ast.Module

    @property
    def app(self) -> str:
        return self.module.split(".", 1)[0]

    @property
    def is_package(self) -> bool:
        return self.path.endswith("/__init__.py")


@cache
def sources() -> tuple[Source, ...]:
    """Every app's code: no tests (they live in tests/), no migrations (generated)."""
    found = []
    for app in APPS:
        for file in sorted((ROOT / app).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            if "/migrations/" in rel:
                continue
            parts = rel[: -len(".py")].split("/")
            if parts[-1] == "__init__":
                parts.pop()
            found.append(Source(rel, ".".join(parts), ast.parse(file.read_text(), filename=rel)))
    return tuple(found)


def test_it_reads_every_app():
    assert {s.app for s in sources()} == set(APPS)


# --- Services are the only writers ----------------------------------------------------------

WRITE_METHODS = {
    "save",
    "update",
    "create",
    "delete",
    "get_or_create",
    "update_or_create",
    "bulk_create",
    "bulk_update",
}

# Modules besides each app's services.py (or services/ package) that write rows, and why.
SERVICE_MODULES = {
    "playbooks/runs.py": (
        "the run services: inventories, dry runs and applies, their events and cancelling "
        "(playbooks/services.py holds diffs, playbooks and versions)"
    ),
    "sandboxes/idle.py": (
        "the idle services: a sandbox's last use, pausing, hibernating and waking it (its "
        "state through lifecycle.transition, under the row lock the sweep and wakers share)"
    ),
    "sandboxes/lifecycle.py": (
        "the state machine's one compare-and-set (transition): every write of a sandbox's state "
        "goes through it, with its audit event; the services and the tasks call it"
    ),
}

# Calls named like a write whose receiver is not a model or a queryset: (module, receiver).
NOT_A_MODEL = {
    ("core/api/errors.py", "fields"): "dict.update of the error body's field messages",
    ("audit/models.py", "super()"): "AuditEvent.save: the append-only guard, then Model.save",
    ("sandboxes/models.py", "super()"): "Host.save setting its queue name, then Model.save",
    ("sandboxes/reconcile.py", "_redis()"): "Redis DEL of the strays' first-seen keys",
}


def is_service_module(path: str) -> bool:
    parts = path.split("/")
    return parts[1] == "services.py" or (len(parts) > 2 and parts[1] == "services")


# The layer without Django: libvirt, SSH, the guest reader and the diff engine.
DJANGO_FREE = ("sandboxes.drivers", "sandboxes.remote", "diffing")


def can_reach_a_model(src: Source) -> bool:
    """False for a module that imports neither Django (nor DRF, Channels, Celery) nor any
    app outside the Django-free layer: it has no model to write."""
    for imp in imports(src):
        top = imp.target.split(".", 1)[0]
        if top in ("django", "rest_framework", "channels", "celery"):
            return True
        if app_of(imp.target) and not imp.target.startswith(DJANGO_FREE):
            return True
    return False


def writes(src: Source) -> list[tuple[int, str]]:
    """(line, "receiver.method") of every call named like a row write."""
    found = []
    for node in ast.walk(src.tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in WRITE_METHODS
        ):
            receiver = ast.unparse(node.func.value)
            if (src.path, receiver) not in NOT_A_MODEL:
                found.append((node.lineno, f"{receiver}.{node.func.attr}"))
    return sorted(found)


def test_services_are_the_only_writers():
    """Views, admin, tasks, consumers and commands call a service; only services (and the
    modules listed with a reason) call save/update/create/delete on a model or queryset.
    Modules that cannot reach a model (the drivers, remote, diffing, the isolated runner)
    are skipped: their dict/set/hash `.update` and libvirt's `.create`/`.delete` write no row."""
    offenders = []
    for src in sources():
        if is_service_module(src.path) or src.path in SERVICE_MODULES:
            continue
        if not can_reach_a_model(src):
            continue
        offenders += [f"{src.path}:{line}: {call}" for line, call in writes(src)]
    assert not offenders, "rows written outside the services:\n" + "\n".join(offenders)


def test_the_writers_allow_list_names_real_modules():
    paths = {s.path for s in sources()}
    named = set(SERVICE_MODULES) | {p for p, _ in NOT_A_MODEL}
    assert named <= paths, sorted(named - paths)


# --- Imports between apps -------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    path: str
    line: int
    target: str  # absolute dotted name (module, or module.name for `from module import name`)


def imports(src: Source) -> list[Import]:
    """Every import of the module, function-level (lazy) ones included, made absolute."""
    package = src.module.split(".") if src.is_package else src.module.split(".")[:-1]
    found = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Import):
            found += [Import(src.path, node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found += [Import(src.path, node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def app_of(target: str) -> str | None:
    top = target.split(".", 1)[0]
    return top if top in ORDER else None


def cross_app_imports() -> list[tuple[str, str, Import]]:
    edges = []
    for src in sources():
        for imp in imports(src):
            to = app_of(imp.target)
            if to and to != src.app:
                edges.append((src.app, to, imp))
    return edges


def describe(edges) -> str:
    return "\n".join(f"{imp.path}:{imp.line}: {a} -> {imp.target}" for a, _b, imp in edges)


def test_apps_import_only_the_apps_before_them():
    order = {app: i for i, app in enumerate(ORDER)}
    upward = [e for e in cross_app_imports() if order[e[1]] > order[e[0]]]
    assert not upward, f"imports against the order {' < '.join(ORDER)}:\n" + describe(upward)


def test_core_imports_no_app():
    assert not [e for e in cross_app_imports() if e[0] == "core"]


def test_no_import_cycle_between_apps():
    graph: dict[str, set[str]] = defaultdict(set)
    evidence = defaultdict(list)
    for a, b, imp in cross_app_imports():
        graph[a].add(b)
        evidence[a, b].append(imp)
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles between apps:\n" + "\n".join(
        " <-> ".join(sorted(c))
        + "\n  "
        + "\n  ".join(
            f"{i.path}:{i.line} -> {i.target}"
            for a in c
            for b in c
            for i in evidence.get((a, b), [])
        )
        for c in cycles
    )


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components with more than one app: each is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(component)

    for v in list(graph):
        if v not in index:
            visit(v)
    return result


# --- The API layer does not reach into the driver layer -------------------------------------

# Each app's api/ package, and the modules that answer HTTP or websockets beside it
# (ask_endpoint.py: approvals' bare ASGI endpoint for a blocking ask).
API_FILES = {"views.py", "consumers.py", "routing.py", "urls.py", "ask_endpoint.py"}
# The driver layer and its two bridges (runtime builds the drivers, provisioning runs them).
DRIVER_LAYER = (
    "sandboxes.drivers",
    "sandboxes.remote",
    "sandboxes.runtime",
    "sandboxes.provisioning",
)

# TEMPORARY: being moved to services by the playbooks/terminals/approvals work; empty this
# after merging. module -> what it imports.
TEMPORARY_API_DRIVER_IMPORTS: dict[str, str] = {}


def is_api_layer(path: str) -> bool:
    parts = path.split("/")
    return "api" in parts[1:-1] or parts[-1] in API_FILES


def test_the_api_layer_does_not_import_drivers_or_remote():
    offenders, seen = [], set()
    for src in sources():
        if not is_api_layer(src.path):
            continue
        for imp in imports(src):
            if any(imp.target == d or imp.target.startswith(d + ".") for d in DRIVER_LAYER):
                if src.path in TEMPORARY_API_DRIVER_IMPORTS:
                    seen.add(src.path)
                else:
                    offenders.append(f"{imp.path}:{imp.line}: {imp.target}")
    assert not offenders, "the API layer imports the driver layer:\n" + "\n".join(offenders)
    stale = sorted(set(TEMPORARY_API_DRIVER_IMPORTS) - seen)
    assert not stale, f"remove from TEMPORARY_API_DRIVER_IMPORTS: {stale}"


# --- One way to enqueue, one way to wait ----------------------------------------------------

SEND_METHODS = {"send_task", "apply_async", "delay", "signature", "s", "si"}


def calls_named(src: Source, names: set[str]) -> list[tuple[int, str]]:
    return [
        (node.lineno, ast.unparse(node.func))
        for node in ast.walk(src.tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in names
    ]


def test_tasks_are_sent_only_through_core_queues():
    offenders = [
        f"{src.path}:{line}: {call}"
        for src in sources()
        if src.path != "core/queues.py"
        for line, call in calls_named(src, SEND_METHODS)
    ]
    assert not offenders, "tasks sent around core.queues.enqueue:\n" + "\n".join(offenders)


def sleeps(src: Source) -> list[tuple[int, str]]:
    return [
        (line, call)
        for line, call in calls_named(src, {"sleep"})
        if call in ("time.sleep", "asyncio.sleep")
    ]


def test_the_web_side_waits_only_through_core_wakeups():
    """Services and request handlers never poll with sleep: they wait on core.wakeups (woken
    by the worker, re-reading the row as the truth). Sleeping is for the driver layer's
    retries; a websocket consumer's timers (a reply's deadline, batching) are not waits."""
    web_side = [
        s
        for s in sources()
        if is_service_module(s.path) or (is_api_layer(s.path) and "consumers" not in s.path)
    ]
    offenders = [f"{s.path}:{line}: {call}" for s in web_side for line, call in sleeps(s)]
    assert not offenders, "waits that poll instead of core.wakeups:\n" + "\n".join(offenders)
