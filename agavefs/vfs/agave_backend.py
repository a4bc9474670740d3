"""``Backend`` over ``agavefs.client.AgaveClient``: mount paths <-> system paths.

The mount shows the folder ``root`` (an absolute path on the storage system) at
"/".  This module only joins paths and converts records; every HTTP detail stays in
the client.
"""

from __future__ import annotations

import posixpath

from agavefs.errors import NotFound
from agavefs.vfs.backend import Entry, Staging
from agavefs.vfs.writeback import TEMP_PREFIX

_STAGING = {"stored": Staging.STORED, "pending": Staging.PENDING, "failed": Staging.FAILED,
            "lost": Staging.LOST}


def resolve_root(client, path: str | None) -> str:
    """The absolute system path to mount: ``path`` absolute as given, relative to the
    system's homeDir otherwise; by default the user's folder in homeDir when it exists
    (``/home/<user>`` on a shared system), else homeDir itself."""
    home = client.home_dir() or "/"
    if path:
        root = path if path.startswith("/") else posixpath.join(home, path)
    else:
        root = home
        user = getattr(client, "username", None)
        if user:
            candidate = posixpath.join(home, user)
            try:
                if client.stat(candidate).is_dir:
                    root = candidate
            except NotFound:
                pass
            except Exception:  # noqa: BLE001 - homeDir itself then
                pass
    root = posixpath.normpath(root)
    return "/" if root in (".", "//") else root


class AgaveBackend:
    synchronous_upload = False

    def __init__(self, client, root: str):
        self.client = client
        self.root = root.rstrip("/") or "/"

    def remote(self, path: str) -> str:
        if path in ("", "/"):
            return self.root
        return self.root + path if self.root != "/" else path

    @staticmethod
    def _entry(remote, name: str) -> Entry:
        return Entry(name, remote.is_dir, remote.size, remote.mtime.timestamp(), remote.readable,
                     remote.writable)

    def stat(self, path: str) -> Entry:
        return self._entry(self.client.stat(self.remote(path)), posixpath.basename(path) or "/")

    def stat_with_children(self, path: str, children: int) -> tuple[Entry, list[Entry], bool]:
        me, kids, complete = self.client.stat_with_children(self.remote(path), children)
        return self._entry(me, posixpath.basename(path) or "/"), [self._entry(c, c.name) for c in kids], complete

    def list(self, path: str) -> tuple[Entry, list[Entry]]:
        me, children = self.client.list(self.remote(path), lambda c: self._entry(c, c.name))
        return self._entry(me, posixpath.basename(path) or "/"), children

    def read(self, path: str, offset: int, size: int, file_size: int | None = None) -> bytes:
        return self.client.read(self.remote(path), offset, size, file_size=file_size)

    def open_stream(self, path: str, offset: int, file_size: int | None = None):
        return self.client.open_stream(self.remote(path), offset, file_size=file_size)

    def upload(self, local_path: str, dir_path: str, name: str, progress=None) -> None:
        self.client.upload(local_path, self.remote(dir_path), name, progress=progress)

    def upload_stream(self, chunks, dir_path: str, name: str) -> None:
        self.client.upload_stream(chunks, self.remote(dir_path), name)

    def staging_state(self, path: str, size: int) -> tuple[Staging, object, int | None]:
        # the write-back's temporary names are unique per upload attempt: "fresh"
        obs = self.client.staging_state(self.remote(path), size,
                                        fresh=posixpath.basename(path).startswith(TEMP_PREFIX))
        return _STAGING[obs.state.value], obs.progress_key, obs.length

    def mkdir(self, path: str) -> bool:
        return self.client.mkdir(self.remote(path))

    def rename(self, path: str, new_name: str) -> None:
        self.client.rename(self.remote(path), new_name)

    def move(self, path: str, dest_path: str) -> None:
        self.client.move(self.remote(path), self.remote(dest_path))

    def delete(self, path: str) -> None:
        self.client.delete(self.remote(path))

    def status(self) -> dict:
        out = self.client.stats.snapshot()
        expires = self.client.token_expires_at()
        out["token_expires_at"] = expires.timestamp() if expires else None
        out["system"] = self.client.system_id
        out["root"] = self.root
        return out
