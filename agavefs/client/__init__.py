"""The Agave v2 client: HTTP and Agave, nothing of FUSE.

Modules (imports point downward only; stdlib, requests, requests_toolbelt and
agavefs.errors are the only outside dependencies)::

    paths        system paths -> URL parts (validation, percent-encoding)
    models       RemoteEntry, history events, StagingState, ClientStats
    credentials  the agave-cli/agavepy cache file (atomic, 0600, flock)
    responses    envelope parsing, fault detection, status -> exception, redaction
    transport    per-thread sessions, retries, deadlines, auth header, logging
    auth         OAuth calls and the TokenManager (refresh, cross-process)
    paging       offset/limit paging that survives capped limits and shifting lists
    reading      ranged reads and ReadStream (all three Range behaviours, 416)
    staging      history tail, staging_state, wait_staged
    api          AgaveClient, which the VFS uses
"""

from agavefs.client.api import AgaveClient
from agavefs.client.credentials import Credentials
from agavefs.client.models import (ClientStats, HistoryEvent, RemoteEntry, StagingObservation,
                                   StagingState)
from agavefs.client.reading import ReadStream

__all__ = ["AgaveClient", "Credentials", "RemoteEntry", "StagingState", "StagingObservation",
           "ClientStats", "HistoryEvent", "ReadStream"]
