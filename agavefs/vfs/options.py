"""Mount options that the VFS and the FUSE adapter read.  stdlib only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass
class Options:
    # metadata
    attr_ttl: float = 60.0  # per-path attributes, also the kernel's attr/entry timeout
    dir_ttl: float = 60.0  # directory listings
    negative_ttl: float = 5.0  # "does not exist" answers
    max_cached_entries: int = 200_000  # entries over all cached listings and attributes
    # attributes
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    read_only: bool = False
    strict: bool = False  # chmod/chown/utimens on remote files fail with EPERM
    # read path
    readahead_min: int = 1 * MiB
    readahead_max: int = 32 * MiB
    readahead_total: int = 64 * MiB  # over all open files
    walk_ahead: int = 8  # directories listed ahead of a tree walker at once (walkahead.py); 0: off
    prefetch_files: int = 16  # small files fetched ahead of a reader of sibling files (siblings.py); 0: off
    # write path
    cache_dir: str = ""
    cache_max_size: int = 10 * 1024 * MiB  # the spool
    upload_workers: int = 4
    upload_delay: float = 0.2  # grace before an upload starts (a version superseded at once is never sent)
    stream_min: int = 8 * MiB  # a file appended from empty this far uploads while written (streaming.py)
    stream_idle: float = 5.0  # seconds without a new byte that end such a stream (it uploads at close)
    sync_close: bool = False
    staging_timeout: float = 120.0  # no progress for this long: the staging job is lost
    op_timeout: float = 30.0  # bound on a waiting filesystem call (fsync, full spool...)
    fsync_spool: bool = True  # fsync spool data and journal at close
