"""Local state of a file that has bytes in the spool.

A ``FileNode`` exists while a file is open for writing or has an upload pending.
Its ``path`` follows renames; handles and upload jobs hold the node, so a rename
retargets them all at once.

Locks: the fields are protected by the VFS lock (``VFS._lock``), except ``ns_lock``
itself, which serializes the *remote* namespace steps that touch this file (an
upload's final rename, a rename or unlink through the mount), so an older version
can never land after a newer one.  ``open_lock`` serializes the (possibly long) preparation of a writable spool.
Lock order: ``open_lock`` -> ``ns_lock`` -> ``VFS.lock``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agavefs.vfs.spool import SpoolFile

if TYPE_CHECKING:
    from agavefs.vfs.reader import RemoteReader


class FileNode:
    def __init__(self, path: str, *, remote_exists: bool | None, remote_size: int = 0):
        self.path = path
        self.spool: SpoolFile | None = None  # the newest local content
        self.sealed = False  # spool is queued for upload: read-only
        self.base_pending = False  # spool lacks the remote content (fetched lazily)
        self.remote_size = remote_size  # size of the remote content (base)
        self.remote_exists = remote_exists  # is there a version on the server?
        self.size = remote_size  # size as the mount shows it
        self.mtime = time.time()
        self.writers = 0  # open write handles
        self.readers = 0  # open read-only handles reading the spool
        self.dirty = False  # changed since the last upload was queued
        self.deleted = False  # unlinked while open
        # streamed uploads (streaming.py): the spool has been written only by appends
        # since it was empty, up to append_at (None: not so); appends in flight
        self.append_at: int | None = None
        self.appending = 0
        self.jobs: list = []  # upload jobs not finished, oldest first
        self.ns_lock = threading.Lock()
        self.open_lock = threading.RLock()  # serializes giving the node a writable spool

    @property
    def local(self) -> bool:
        """The mount answers this path from the spool (read-your-writes)."""
        return self.spool is not None and not self.deleted


BLOCK = 4096  # st_blksize-ish unit: the size shown for directories, statfs blocks


def is_trash_name(name: str) -> bool:
    """A desktop trash can (``.Trash``, ``.Trash-UID``), refused at the mount root."""
    return name == ".Trash" or name.startswith(".Trash-")


@dataclass
class Handle:
    path: str
    writable: bool
    node: FileNode | None = None
    reader: RemoteReader | None = None
    entries: list | None = None  # directory handles: the listing snapshot
    size: int = 0
    mtime: float = 0.0  # remote files: the modification time when opened
    # a read-only handle of a remote file whose name was since deleted or renamed over:
    # it keeps reading what it can, and no new local content of that name is its file
    orphan: bool = False
    ended: bool = False  # a remote file's reader reached its end (siblings.py counts it once)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # written or truncated through this handle since its last flush: only then does a
    # flush seal (a shell's `> file` or dd closes a duplicate of a fresh, still empty
    # descriptor first; sealing there would upload an empty version of a file that is
    # about to be written).  RELEASE seals whatever is left.
    changed: bool = False
