"""Options of the embedded Agave server (``agavefs serve``) as one dataclass.

Design note: the public knobs are exactly those of ``agavefs serve --help``.  A few
test-only knobs are read from the environment (they are documented in the command's
help epilog) so that tests of the client can provoke rare server behaviour:

``AGAVEFS_EMULATOR_STAGING_BPS``
    throttle each background staging copy to this many bytes per second, so a listing
    can observe a file growing in place;
``AGAVEFS_EMULATOR_STAGING_FAIL`` / ``AGAVEFS_EMULATOR_STAGING_LOSE``
    fraction (0..1) of staging jobs that fail (STAGING_FAILED) or are silently lost
    (no event ever follows STAGING_QUEUED), as the real in-memory queue can;
``AGAVEFS_EMULATOR_DELETE_401``
    when "1", a DELETE without write permission on a path with no history answers 401
    with an Agave error envelope (the real server's quirk) instead of 403;
``AGAVEFS_EMULATOR_TRUNCATE_BODY``
    a fraction F (0 <= F < 1): every file download (media GET, ranged or not) sends
    only F of the bytes its Content-Length promises, then closes the connection, as a
    proxy or a crashing server can (clients must never take that for the content).

stdlib only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

RANGE_MODES = ("agave", "rfc", "ignore")


def _env_float(name: str, default: float = 0.0) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


@dataclass
class Options:
    root: str
    host: str = "127.0.0.1"
    port: int = 0
    users: dict[str, str] = field(default_factory=lambda: {"demo": "demo"})
    system_id: str = "local.storage"
    staging_delay: float = 0.5
    token_ttl: int = 14400
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    range_mode: str = "agave"
    max_page: int | None = None
    access_log: str | None = None
    tls: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    state: str | None = None
    staging_workers: int = 8
    # test-only knobs (environment)
    staging_bps: float = field(default_factory=lambda: _env_float("AGAVEFS_EMULATOR_STAGING_BPS"))
    staging_fail_rate: float = field(default_factory=lambda: _env_float("AGAVEFS_EMULATOR_STAGING_FAIL"))
    staging_lose_rate: float = field(default_factory=lambda: _env_float("AGAVEFS_EMULATOR_STAGING_LOSE"))
    delete_401: bool = field(default_factory=lambda: os.environ.get("AGAVEFS_EMULATOR_DELETE_401") == "1")
    truncate_body: float = field(default_factory=lambda: _env_float("AGAVEFS_EMULATOR_TRUNCATE_BODY", -1.0))

    def __post_init__(self) -> None:
        if self.range_mode not in RANGE_MODES:
            raise ValueError(f"range mode must be one of {', '.join(RANGE_MODES)}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail rate must be between 0 and 1")
        if self.max_page is not None and self.max_page < 1:
            raise ValueError("max page must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls and self.tls_cert:
            raise ValueError("--tls makes its own certificate; do not combine it with --tls-cert")
        if not self.users:
            raise ValueError("at least one user is needed")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_cert)
