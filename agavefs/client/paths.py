"""System paths and their URL form.

Design note
-----------
Every client method takes a *system path*: either absolute ("/home/demo/a b.txt",
rooted at the storage system's ``rootDir``) or home-relative ("a b.txt", no leading
slash, relative to the system's ``homeDir``).  Agave tells the two apart by the
number of slashes after the system id (agave-api.md section 2)::

    .../system/S//home/demo/x     absolute
    .../system/S/x                home-relative

A path is parsed into a :class:`SysPath` (absolute flag + validated segments)
*before* any request is made, so that a hostile or mistaken name never reaches the
wire: "." and "..", empty names, names containing "/" or NUL are refused with
``InvalidArgument`` and a segment longer than 255 UTF-8 bytes with
``NameTooLong``.  Each segment is percent-encoded with ``quote(safe="")``: the server
decodes the URL path, so a space, ``#``, ``?``, ``%``, ``+``, ``&`` or a quote in a
name must be escaped, and ``%2F`` would become a "/" (which is why "/" cannot be in
a name at all).  URLs are always built from the system id and the path, never from
``_links`` (whose host can be wrong).

No state and no locks: everything here is a pure function or an immutable value.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from agavefs.errors import InvalidArgument, NameTooLong

NAME_MAX = 255  # bytes, as on Linux


def check_name(name: str) -> str:
    """Return ``name`` if it can be one path segment, else raise.

    Raises InvalidArgument for "", ".", "..", a "/" or NUL inside, or a string that
    cannot be encoded as UTF-8 (surrogate escapes of undecodable bytes), and
    NameTooLong for more than 255 bytes.
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"invalid name {name!r}: not a string")
    if name in ("", ".", ".."):
        raise InvalidArgument(f"invalid name {name!r}")
    if "/" in name or "\0" in name:
        raise InvalidArgument(f"invalid name {name!r}: contains '/' or NUL")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"invalid name {name!r}: not valid UTF-8") from None
    if len(raw) > NAME_MAX:
        raise NameTooLong(f"name too long ({len(raw)} bytes): {name[:40]!r}...")
    return name


@dataclass(frozen=True)
class SysPath:
    """A validated system path.  ``segments`` is empty for "/" (absolute) or home."""

    absolute: bool
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, path: "str | SysPath") -> "SysPath":
        if isinstance(path, SysPath):
            return path
        if not isinstance(path, str):
            raise InvalidArgument(f"invalid path {path!r}: not a string")
        if "\0" in path:
            raise InvalidArgument("invalid path: contains NUL")
        absolute = path.startswith("/")
        # Repeated and trailing slashes are harmless separators; "." and ".." are
        # refused rather than resolved, so that the caller sees exactly what it sent.
        segments = tuple(check_name(s) for s in path.split("/") if s != "")
        return cls(absolute, segments)

    # -- views -----------------------------------------------------------------
    def __str__(self) -> str:
        text = "/".join(self.segments)
        return "/" + text if self.absolute else text

    @property
    def name(self) -> str:
        """The last segment ("" for the root or the home directory itself)."""
        return self.segments[-1] if self.segments else ""

    @property
    def is_top(self) -> bool:
        """True for "/" and for the home directory ("")."""
        return not self.segments

    def parent(self) -> "SysPath":
        if not self.segments:
            raise InvalidArgument(f"{self or '/'} has no parent")
        return SysPath(self.absolute, self.segments[:-1])

    def child(self, name: str) -> "SysPath":
        return SysPath(self.absolute, self.segments + (check_name(name),))

    def url_part(self) -> str:
        """The part after ``.../system/ID``: "//a/b" (absolute) or "/a/b" (relative)."""
        encoded = "/".join(quote(s, safe="") for s in self.segments)
        return ("//" if self.absolute else "/") + encoded


def join(directory: str, name: str) -> str:
    """``directory`` + "/" + ``name`` as a path string, validating ``name``."""
    return str(SysPath.parse(directory).child(name))


def basename(path: str) -> str:
    return SysPath.parse(path).name


def dirname(path: str) -> str:
    return str(SysPath.parse(path).parent())


def normalize(path: str) -> str:
    """Collapse repeated/trailing slashes; validate every segment."""
    return str(SysPath.parse(path))


def clean_remote_path(value: object) -> str | None:
    """A server-supplied absolute path, normalised, or None when unusable."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        return None
    parts = [p for p in value.split("/") if p != ""]
    if any(p in (".", "..") for p in parts):
        return None
    return "/" + "/".join(parts)
