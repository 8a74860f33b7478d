"""The agent-facing REST API. Views parse, authorise, call one service and serialise."""

from __future__ import annotations

import logging

import django_filters
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import paths
from core.api.pagination import CursorPagination
from core.api.schema import errors
from core.conf import vsb
from core.errors import OperationFailed

from .. import idle, services
from ..choices import OperationStatus
from ..models import Host, Operation, Sandbox, SourceVM
from .serializers import (
    CommandResultSerializer,
    CommandSerializer,
    CreateSandboxSerializer,
    CreateSnapshotSerializer,
    HealthSerializer,
    HostListSerializer,
    HostStatusSerializer,
    OperationSerializer,
    PauseSerializer,
    RunCommandSerializer,
    SandboxDetailSerializer,
    SandboxOperationSerializer,
    SandboxSerializer,
    SnapshotOperationSerializer,
    SnapshotSerializer,
    VMListSerializer,
    WaitSerializer,
)

log = logging.getLogger(__name__)

# 400/401/403/404 are implied, and 429 past the key's request rate (core.api.schema.AutoSchema);
# a sandbox may be in the wrong state, and 409 `quota_exceeded` on a create or a snapshot over
# a quota (README "Limits").
ERRORS = errors(409)
# A verb that may wait for the host: the step failed (502) or took too long (504).
WAITED = errors(409, 502, 504)
# The orders of the lists (docs/architecture.md, "Lists"): what was made last first for
# sandboxes and operations, a history oldest first for commands and snapshots.
NEWEST_FIRST = CursorPagination.ordered_by("-created_at", "-id")
COMMANDS_IN_ORDER = CursorPagination.ordered_by("started_at", "id")
SNAPSHOTS_IN_ORDER = CursorPagination.ordered_by("created_at", "id")


def _input(serializer_class, data) -> dict:
    """The request body, validated by `serializer_class` (a 400 naming the fields otherwise)."""
    params = serializer_class(data=data)
    params.is_valid(raise_exception=True)
    return dict(params.validated_data)


def _waited(op: Operation, timeout: float) -> Operation:
    op = services.wait_for_operation(op, timeout)
    if op.status != OperationStatus.SUCCEEDED:
        raise OperationFailed(f"{op.kind} failed: {op.error} (operation {op.id})")
    return op


# A slow verb's answers: 202 with its operation, or 200 once it succeeded when asked to wait.
OPERATION_ANSWERS = {200: SandboxOperationSerializer, 202: SandboxOperationSerializer, **WAITED}
# The request and answers of the verbs that also have the original's path (an alias).
RUN_COMMAND = {
    "request": RunCommandSerializer,
    # 429: as many commands of yours run as your quota allows.
    "responses": {200: CommandResultSerializer, **WAITED, **errors(429)},
}
TAKE_SNAPSHOT = {
    "request": CreateSnapshotSerializer,
    "responses": {201: SnapshotOperationSerializer, 202: SnapshotOperationSerializer, **WAITED},
}


def lifecycle_verb(name: str, start_operation, wait: tuple[str, int], url_path=None, **schema):
    """A slow lifecycle verb as a sandbox action: `start_operation(sandbox, user, *route
    arguments)` starts it and the answer is `_maybe_wait`'s, waiting up to the setting
    `wait[0]` plus `wait[1]` seconds. `schema`: its summary and description."""
    setting, margin = wait

    def verb(self, request, pk=None, **route):
        return self._maybe_wait(
            request,
            lambda: start_operation(self.get_object(), request.user, *route.values()),
            vsb(setting) + margin,
        )

    verb.__name__ = verb.__qualname__ = name
    verb = action(detail=True, methods=["post"], url_path=url_path)(verb)
    return extend_schema(request=WaitSerializer, responses=OPERATION_ANSWERS, **schema)(verb)


class SandboxFilter(django_filters.FilterSet):
    state = django_filters.CharFilter()
    agent_id = django_filters.CharFilter()
    source_vm_name = django_filters.CharFilter(field_name="source__name")
    base_image = django_filters.CharFilter(field_name="source__name")
    host = django_filters.CharFilter(field_name="host__name")
    vm_name = django_filters.CharFilter(field_name="name")

    class Meta:
        model = Sandbox
        fields = ["state", "agent_id", "source_vm_name", "host", "vm_name"]


@extend_schema_view(
    list=extend_schema(
        summary="List your sandboxes",
        description="Newest first, paginated by `cursor` (follow `next`).",
        responses={200: SandboxSerializer(many=True), **errors(400)},
    ),
    retrieve=extend_schema(
        summary="Get a sandbox",
        parameters=[
            OpenApiParameter(
                "include_commands", bool, description="Also return the command history."
            )
        ],
        responses={200: SandboxDetailSerializer, **ERRORS},
    ),
)
class SandboxViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Sandboxes: disposable VMs, linked clones of a source VM, that only you can see."""

    serializer_class = SandboxSerializer
    filterset_class = SandboxFilter
    lookup_value_regex = paths.UUID
    pagination_class = NEWEST_FIRST

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Sandbox.objects.none()
        return services.visible_sandboxes(self.request.user)

    def retrieve(self, request, *args, **kwargs):
        sandbox = self.get_object()
        found = {"sandbox": sandbox}
        if request.query_params.get("include_commands") in ("1", "true", "True"):
            found["commands"] = sandbox.commands.all()[:500]
        return Response(SandboxDetailSerializer(found).data)

    @extend_schema(
        summary="Create a sandbox",
        description=(
            "Clones the source VM on a KVM host's worker. Answers 202 with the create operation; "
            "with `wait_for_ip: true` it answers 201 once the sandbox is ready (SSH answers). "
            "A host boots only so many guests at once: beyond that the sandbox is `queued`, "
            "first come first served, its `queue_position` (1 = next) on the sandbox and the "
            "operation; the readiness timeout counts from the start of its boot. "
            "Without `ttl_seconds` the sandbox gets the default TTL (your key's, else the "
            "server's; none if that is 0). Past a quota of yours (live sandboxes, their total "
            "memory) it answers 409 `quota_exceeded`, naming the quota and the usage."
        ),
        request=CreateSandboxSerializer,
        responses={
            201: SandboxOperationSerializer,
            202: SandboxOperationSerializer,
            **WAITED,
            **errors(503),  # no live worker with room
        },
    )
    def create(self, request):
        data = _input(CreateSandboxSerializer, request.data)
        wait = data.pop("wait_for_ip")
        op = services.create_sandbox(request.user, api_key=request.auth, **data)
        code = status.HTTP_202_ACCEPTED
        if wait and data.get("auto_start", True):
            op = _waited(op, vsb("READY_TIMEOUT_SECONDS") + 30)
            code = status.HTTP_201_CREATED
        return self._sandbox_op(op, code)

    def _maybe_wait(self, request, start_operation, timeout: float) -> Response:
        """Start a slow verb: 202 with its operation, or with `wait` (or the original's
        `wait_for_ip`) 200 once it succeeded."""
        params = _input(WaitSerializer, request.data or {})
        op = start_operation()
        if params["wait"] or params["wait_for_ip"]:
            return self._sandbox_op(_waited(op, timeout), status.HTTP_200_OK)
        return self._sandbox_op(op, status.HTTP_202_ACCEPTED)

    def _sandbox_op(self, op: Operation, code: int) -> Response:
        sandbox = Sandbox.objects.select_related("host", "source").get(pk=op.sandbox_id)
        found = {"sandbox": sandbox, "operation": op}
        if sandbox.ip_address or sandbox.ssh_host:
            found["ip_address"] = sandbox.ip_address or sandbox.ssh_host
        return Response(SandboxOperationSerializer(found).data, status=code)

    @extend_schema(
        summary="Destroy a sandbox", responses={202: SandboxOperationSerializer, **ERRORS}
    )
    def destroy(self, request, *args, **kwargs):
        op = services.destroy_sandbox(self.get_object(), request.user)
        return self._sandbox_op(op, status.HTTP_202_ACCEPTED)

    start = lifecycle_verb(
        "start",
        services.start_sandbox,
        ("READY_TIMEOUT_SECONDS", 30),
        summary="Start a stopped sandbox",
    )
    stop = lifecycle_verb(
        "stop",
        services.stop_sandbox,
        ("SHUTDOWN_TIMEOUT_SECONDS", 60),
        summary="Stop a sandbox (ACPI shutdown, then force off)",
    )

    @extend_schema(
        summary="Pause a sandbox",
        description=(
            "Stops the guest's vCPUs at once; its memory stays on the host. Any call that needs "
            "the guest (a command, a terminal, a file, a snapshot, a diff) resumes it first, "
            "transparently. With `hibernate: true` its memory is saved to disk and freed "
            "(waking then takes seconds). A paused sandbox stays as it is (or is hibernated), "
            "a hibernated one too. 409 while a command runs in it, or when it is not ready."
        ),
        request=PauseSerializer,
        responses={200: SandboxDetailSerializer, **WAITED},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        params = _input(PauseSerializer, request.data or {})
        sandbox = idle.pause_sandbox(self.get_object(), request.user, **params)
        return Response(SandboxDetailSerializer({"sandbox": sandbox}).data)

    @extend_schema(
        summary="Resume a paused or hibernated sandbox",
        description=(
            "Resumes a paused sandbox (milliseconds) or restores a hibernated one from its "
            "saved memory (seconds) and answers once it is ready. A ready sandbox stays as it "
            "is. No call needs this first: every call that needs the guest resumes it. 503 "
            "`capacity` when a hibernated sandbox's host has no room for its memory now."
        ),
        request=None,
        responses={200: SandboxDetailSerializer, **WAITED, **errors(503)},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        sandbox = idle.resume_sandbox(self.get_object(), request.user)
        return Response(SandboxDetailSerializer({"sandbox": sandbox}).data)

    @extend_schema(
        summary="Run a command in the sandbox",
        description=(
            "Runs `command` with /bin/sh over SSH as root and waits for it. A non-zero exit code is "
            "still 200; `timed_out` and the `*_truncated` flags tell when output is partial. "
            "While as many commands of yours run as your quota allows, 429 `quota_exceeded`. "
            "While the sandbox's host has no live worker (`available: false`), 503 "
            "`host_unavailable` at once, naming the host."
        ),
        **RUN_COMMAND,
    )
    @action(detail=True, methods=["post"])
    def command(self, request, pk=None):
        params = _input(RunCommandSerializer, request.data)
        cmd = services.run_command(self.get_object(), request.user, api_key=request.auth, **params)
        return Response(CommandResultSerializer({"command": cmd}).data)

    @extend_schema(summary="Run a command (the original's path)", **RUN_COMMAND)
    @action(detail=True, methods=["post"], url_path="run")
    def run(self, request, pk=None):
        return self.command(request, pk)

    # --- snapshots ------------------------------------------------------------------------

    def _snapshot_op(self, op: Operation, code: int) -> Response:
        op.refresh_from_db()
        found = {"operation": op, "snapshot": op.snapshot}
        return Response(SnapshotOperationSerializer(found).data, status=code)

    @extend_schema(
        summary="Take a snapshot",
        description=(
            "Internal snapshot: with the guest's memory while the sandbox runs, of the disk "
            "while it is stopped. 202 with the operation; `wait: true` answers 201 when taken. "
            "Past your quota of snapshots per sandbox, 409 `quota_exceeded`."
        ),
        **TAKE_SNAPSHOT,
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="snapshots",
        pagination_class=SNAPSHOTS_IN_ORDER,
        filter_backends=[],  # the sandbox filters are the list's, not its snapshots'
    )
    def snapshots(self, request, pk=None):
        data = _input(CreateSnapshotSerializer, request.data)
        wait = data.pop("wait")
        op = services.create_snapshot(self.get_object(), request.user, api_key=request.auth, **data)
        if wait:
            return self._snapshot_op(
                _waited(op, services.SNAPSHOT_DEADLINE), status.HTTP_201_CREATED
            )
        return self._snapshot_op(op, status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="List snapshots",
        description="Oldest first, paginated by `cursor` (follow `next`).",
        responses={200: SnapshotSerializer(many=True), **ERRORS},
    )
    @snapshots.mapping.get
    def list_snapshots(self, request, pk=None):
        return self._page(self.get_object().snapshots.all(), SnapshotSerializer)

    @extend_schema(summary="Take a snapshot (the original's path)", **TAKE_SNAPSHOT)
    @action(detail=True, methods=["post"], url_path="snapshot")
    def snapshot(self, request, pk=None):
        return self.snapshots(request, pk)

    @extend_schema(summary="Get a snapshot", responses={200: SnapshotSerializer, **ERRORS})
    @action(detail=True, methods=["get"], url_path=r"snapshots/(?P<snapshot_name>[^/]+)")
    def snapshot_detail(self, request, pk=None, snapshot_name=None):
        return Response(
            SnapshotSerializer(services.get_snapshot(self.get_object(), snapshot_name)).data
        )

    @extend_schema(summary="Delete a snapshot", responses={202: OperationSerializer, **ERRORS})
    @snapshot_detail.mapping.delete
    def delete_snapshot(self, request, pk=None, snapshot_name=None):
        op = services.delete_snapshot(self.get_object(), request.user, snapshot_name)
        return Response(OperationSerializer(op).data, status=status.HTTP_202_ACCEPTED)

    restore = lifecycle_verb(
        "restore",
        services.restore_snapshot,
        ("READY_TIMEOUT_SECONDS", 60),
        url_path=r"snapshots/(?P<snapshot_name>[^/]+)/restore",
        summary="Restore a snapshot",
        description=(
            "Returns the sandbox to the snapshot: running with its memory (the guest clock is "
            "corrected and SSH answers again), or stopped for a disk snapshot."
        ),
    )

    @extend_schema(
        summary="Command history",
        description="Oldest first, paginated by `cursor` (follow `next`).",
        responses={200: CommandSerializer(many=True), **ERRORS},
    )
    @action(detail=True, methods=["get"], pagination_class=COMMANDS_IN_ORDER, filter_backends=[])
    def commands(self, request, pk=None):
        return self._page(self.get_object().commands.all(), CommandSerializer)

    def _page(self, queryset, serializer_class) -> Response:
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(serializer_class(page, many=True).data)


@extend_schema_view(
    list=extend_schema(
        summary="List your operations",
        description="Newest first, paginated by `cursor` (follow `next`).",
        responses={200: OperationSerializer(many=True), **errors(400)},
    ),
    retrieve=extend_schema(
        summary="Get an operation (poll this for slow verbs)",
        responses={200: OperationSerializer, **ERRORS},
    ),
)
class OperationViewSet(viewsets.ReadOnlyModelViewSet):
    """Slow steps (create, start, stop, destroy) done by a host's worker."""

    serializer_class = OperationSerializer
    lookup_value_regex = paths.UUID
    filterset_fields = ["status", "kind", "sandbox"]
    pagination_class = NEWEST_FIRST

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Operation.objects.none()
        return services.visible_operations(self.request.user)


HOST_NAME = r"[a-z0-9][a-z0-9-]{0,62}"


class HostViewSet(viewsets.ViewSet):
    """The KVM hosts, for operators (the sandboxes.view_host or sandboxes.drain_host
    permission; anyone else gets 404): what each worker's heartbeat reported, committed and
    free memory, sandboxes by state, and draining (no new placements; the sandboxes there
    keep working)."""

    lookup_field = "name"
    lookup_value_regex = HOST_NAME

    @extend_schema(
        summary="Hosts (operators)",
        operation_id="v1_hosts_list",
        # 404: the caller is no operator (the route names nothing to it).
        responses={200: HostListSerializer, **errors(404)},
    )
    def list(self, request):
        services.require_host_operator(request.user)
        return Response(HostListSerializer({"hosts": services.host_overviews()}).data)

    @extend_schema(summary="One host (operators)", responses={200: HostStatusSerializer})
    def retrieve(self, request, name=None):
        return Response(self._status(request, name))

    def _status(self, request, name: str, permission: str | None = None) -> dict:
        services.require_host_operator(request.user, permission, what=f"No host {name!r}.")
        host = services.get_host(name)
        if permission:
            host = services.set_draining(host, request.user, self.action == "drain")
        return HostStatusSerializer(services.host_overviews([host])[0]).data

    @extend_schema(
        summary="Drain a host: no new sandboxes (sandboxes.drain_host)",
        request=None,
        responses={200: HostStatusSerializer},
    )
    @action(detail=True, methods=["post"])
    def drain(self, request, name=None):
        return Response(self._status(request, name, services.DRAIN_PERMISSION))

    @extend_schema(
        summary="End a host's draining (sandboxes.drain_host)",
        request=None,
        responses={200: HostStatusSerializer},
    )
    @action(detail=True, methods=["post"])
    def undrain(self, request, name=None):
        return Response(self._status(request, name, services.DRAIN_PERMISSION))


class VMListView(APIView):
    """Source VMs that sandboxes can be cloned from, and the KVM hosts."""

    @extend_schema(summary="List source VMs", responses={200: VMListSerializer})
    def get(self, request):
        found = {
            "vms": SourceVM.objects.filter(enabled=True).select_related("host"),
            "hosts": Host.objects.all(),
        }
        return Response(VMListSerializer(found).data)


class HealthView(APIView):
    """Liveness of the database, the broker and the hosts' workers."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(summary="Health", responses={200: HealthSerializer, 503: HealthSerializer})
    def get(self, request):
        report = services.health()
        return Response(
            HealthSerializer(report).data, status=200 if report["status"] == "ok" else 503
        )
