from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str


@dataclass
class ConnectionRecord:
    sandbox_id: str
    host: str
    port: int
    allowed: bool
    rule: str
    bytes_up: int
    bytes_down: int
    started_at: datetime
    duration_ms: int
    error: str = ""
