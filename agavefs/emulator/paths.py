"""Agave paths, and their safe mapping onto the backing directory ROOT.

Design note.  An *Agave path* is absolute ("/home/demo/x"), normalised, without a
trailing slash; it names ROOT + path on disk.  Every path the server touches goes
through :func:`normalize` and :meth:`Namespace.resolve`, which enforce:

* no NUL byte (400), no segment longer than NAME_MAX bytes (400);
* ``.``/``..`` are resolved lexically; climbing above "/" is 404 ("a path that
  normalizes outside rootDir is 404" in the reference);
* the *real* path (symlinks resolved by ``os.path.realpath``) must stay inside ROOT,
  and neither the lexical nor the real path may touch a hidden path (the state dir,
  the SQLite file and its journals): such paths behave as nonexistent (404);
* only regular files and directories exist: FIFOs, sockets and devices placed in the
  backing directory are treated as nonexistent (opening a FIFO would block a thread).

``Resolved.real_apath`` is the Agave path of the real target; the access layer checks
permissions on both it and the lexical path, so a symlink in demo's home pointing
into bob's home gives demo nothing.  A symlink can be swapped between check and use
(TOCTOU); writes therefore open with O_NOFOLLOW on the final component.  stdlib only.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass

from .errors import AgaveError, not_found

NAME_MAX = 255
HOME_DIR = "/home"


def normalize(raw: str, base: str = HOME_DIR) -> str:
    """Normalise ``raw`` (absolute when it starts with "/", else relative to ``base``)."""
    if "\x00" in raw:
        raise AgaveError(400, "Invalid file path")
    parts = [] if raw.startswith("/") else [p for p in base.split("/") if p]
    for seg in raw.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                raise not_found()
            parts.pop()
            continue
        try:
            size = len(seg.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates (e.g. from JSON "\ud800")
            raise AgaveError(400, "Invalid file path: not valid Unicode") from None
        if size > NAME_MAX:
            raise AgaveError(400, f"File name too long: {seg[:40]}... ({NAME_MAX} bytes at most)")
        parts.append(seg)
    return "/" + "/".join(parts)


def parent_of(apath: str) -> str:
    return apath.rsplit("/", 1)[0] or "/"


def name_of(apath: str) -> str:
    return apath.rsplit("/", 1)[1] if apath != "/" else "/"


def join(apath: str, name: str) -> str:
    return "/" + name if apath == "/" else f"{apath}/{name}"


def is_within(apath: str, top: str) -> bool:
    """True when ``apath`` is ``top`` or below it."""
    return apath == top or top == "/" or apath.startswith(top + "/")


@dataclass
class Resolved:
    apath: str            # lexical Agave path
    host: str             # ROOT + apath
    real: str             # realpath(host)
    real_apath: str       # Agave path of ``real`` (== apath without symlinks)
    st: os.stat_result | None  # None: does not exist (or is not a regular file/dir)
    entry: str            # the directory entry itself: realpath(parent) + "/" + name

    @property
    def exists(self) -> bool:
        return self.st is not None

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat_mod.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return self.st is not None and stat_mod.S_ISREG(self.st.st_mode)


class Namespace:
    """ROOT on disk plus the set of hidden (state) paths.  Immutable after creation."""

    def __init__(self, root: str, hidden: list[str]):
        self.root = os.path.realpath(root)
        self.hidden = tuple(os.path.realpath(h) for h in hidden)

    def host(self, apath: str) -> str:
        return self.root if apath == "/" else self.root + apath

    def is_hidden(self, host_path: str) -> bool:
        return any(host_path == h or host_path.startswith(h + "/") for h in self.hidden)

    def to_apath(self, real: str) -> str | None:
        """Agave path of a real host path, or None when it lies outside ROOT."""
        if real == self.root:
            return "/"
        if real.startswith(self.root + "/"):
            return real[len(self.root):]
        return None

    def resolve(self, apath: str) -> Resolved:
        host = self.host(apath)
        real = os.path.realpath(host)
        real_apath = self.to_apath(real)
        if apath == "/":
            entry = self.root
        else:
            parent_real = os.path.realpath(os.path.dirname(host))
            entry = os.path.join(parent_real, os.path.basename(host))
            if self.to_apath(parent_real) is None or self.is_hidden(entry):
                raise not_found()
        if real_apath is None or self.is_hidden(real) or self.is_hidden(host):
            raise not_found()
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES ...
            raise AgaveError(400, f"Invalid file path: {exc.strerror}") from None
        if st is not None and not (stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode)):
            st = None
        return Resolved(apath, host, real, real_apath, st, entry)

    def child_visible(self, dir_real: str, entry: os.DirEntry,
                      need_stat: bool = True) -> tuple[bool, os.stat_result | None]:
        """Whether a directory entry is listed, and its (followed) stat when asked.

        Plain entries are classified from d_type without a system call; symlinks are
        listed only when their target is inside ROOT, not hidden, and a file or dir.
        A name that is not valid UTF-8 is never listed: no request can name it, and
        a lossy rendering of it could name another file."""
        path = os.path.join(dir_real, entry.name)
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            return False, None
        if self.is_hidden(path):
            return False, None
        try:
            if entry.is_symlink():
                real = os.path.realpath(path)
                if self.to_apath(real) is None or self.is_hidden(real):
                    return False, None
                st = os.stat(real)
                if not (stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode)):
                    return False, None
                return True, st
            if not (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)):
                return False, None
            return True, entry.stat(follow_symlinks=False) if need_stat else None
        except OSError:
            return False, None
