"""Python client for virsh-sandbox: disposable KVM sandboxes for AI agents.

```python
from virsh_sandbox import VirshSandbox

client = VirshSandbox("http://localhost:8080")  # key from $VIRSH_SANDBOX_API_KEY
sandbox = client.sandbox.create_sandbox(source_vm_name="debian-base", agent_id="me",
                                        wait_for_ip=True).sandbox
print(client.sandbox.run_sandbox_command(sandbox.id, "uname -a").command.stdout)
client.sandbox.destroy_sandbox(sandbox.id)
```
"""

from ._api import StreamEvent
from ._core import API_KEY_ENV, URL_ENV
from ._version import __version__
from .client import AsyncVirshSandbox, VirshSandbox
from .errors import (
    AuthError,
    Conflict,
    NotFound,
    OperationFailed,
    RateLimited,
    ServerError,
    TransportError,
    ValidationError,
    VirshSandboxError,
    WaitTimeout,
)
from .models import (
    ApprovalRequest,
    AuditEvent,
    Command,
    CommandList,
    CommandResponse,
    Diff,
    EgressConnection,
    EgressConnectionList,
    EgressPolicy,
    EgressRequest,
    EgressRule,
    FileChange,
    FileContent,
    Health,
    Host,
    HostList,
    HostStatus,
    Operation,
    Playbook,
    Sandbox,
    SandboxList,
    SandboxResponse,
    Snapshot,
    SnapshotResponse,
    SourceVM,
    VMList,
)

__all__ = [
    "API_KEY_ENV",
    "URL_ENV",
    "ApprovalRequest",
    "AuditEvent",
    "AsyncVirshSandbox",
    "AuthError",
    "Command",
    "CommandList",
    "CommandResponse",
    "Conflict",
    "Diff",
    "EgressConnection",
    "EgressConnectionList",
    "EgressPolicy",
    "EgressRequest",
    "EgressRule",
    "FileChange",
    "FileContent",
    "Health",
    "Host",
    "HostList",
    "HostStatus",
    "NotFound",
    "Operation",
    "OperationFailed",
    "Playbook",
    "RateLimited",
    "Sandbox",
    "SandboxList",
    "SandboxResponse",
    "ServerError",
    "Snapshot",
    "SnapshotResponse",
    "SourceVM",
    "StreamEvent",
    "TransportError",
    "VMList",
    "ValidationError",
    "VirshSandbox",
    "VirshSandboxError",
    "WaitTimeout",
    "__version__",
]
