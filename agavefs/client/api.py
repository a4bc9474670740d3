"""AgaveClient: the Agave v2 files, systems and profiles services.

Design note
-----------
This is the only class the VFS talks to.  It knows HTTP and Agave and nothing of
FUSE: every method takes a system path (absolute "/home/demo/x" or home-relative
"x", see paths.py), returns plain records (models.py) and raises the exceptions of
``agavefs.errors`` with the errno a filesystem call should report.

Composition: ``Transport`` (sessions, retries, deadlines, logging) + ``TokenManager``
(refresh, cross-process cache) + mixins for downloads (reading.py) and staging
(staging.py).  Non-idempotent actions are made safe here, where their meaning is
known:

* ``mkdir`` is idempotent (200 "already exists"); when an earlier attempt may
  have acted, "already exists" is reported as created.
* ``rename``/``move`` are sent with the SAFE policy; after an ambiguous failure
  the client checks whether the action already happened (target there, source
  gone) before repeating it.  ``move`` is verified with listings even after a 200,
  because the server sometimes answers 200 for a move that failed.
* ``delete`` is retried; a 404 after an attempt that may have acted is success.
* ``upload`` re-sends only when the server cannot have stored the body (see
  transport.py); the deadline of an upload grows with its size (512 KiB/s floor).
  An answer naming another file than the one sent is a ProtocolError at once
  (waiting for the asked name would only end in LOST).

Listings are asked for in pages of ``LIST_PAGE`` (5,000) entries, projected to the
fields ``parse_entry`` reads (``LIST_FIELDS``, Agave's ``filter``: no ``_links`` nor
``system``, half the bytes).  The server lists the whole directory again for every
page and skips to the offset (agave-api.md section 3), so a directory of n entries
costs the server ~n * pages and the client one round trip per page.  Listing 10,000
entries with plain requests against the emulator took 21 pages of 500 in sequence
(1.09 s / 1.47 s, loopback / 20 ms) and 3 pages of 5,000 (0.37 s / 0.48 s).  A page
of 5,000 is ~1 MB of JSON and ~3.5 MB decoded, one per listing caller and
PAGE_THREADS ahead.  A server that ignores ``filter`` sends whole entries (parsed the
same); one that caps ``limit`` is paged by paging.py's rules.

A lookup of a big directory (``stat_with_children``: its first page of 100) is
usually followed at once by its listing (``ls -l big/``: lookup, then readdir).  That
first page is kept for HEAD_MAX_AGE seconds (``_Head``), and a listing of the same
directory within that time continues after it instead of asking for it again
(paging.collect's ``after``: the next page must repeat the head's last item, else
the directory shifted and the listing starts over from 0).  A head is not used when
this client sent a request that may change something (any but GET and HEAD:
``Transport.changes``) while its page was asked for or since: its entries could be
older than what the mount did.  One request, and one full scan of the directory by
the server, less per ``ls -l``: 10,000 entries cost the lookup and 2 pages, as the
direct client's 3 pages, instead of 4 requests.

Locks: ``_sys_lock`` guards the lazily resolved system id and system details;
``_heads_lock`` the kept heads.  Everything else is either immutable after __init__
or owned by the components (each documents its own locks).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from datetime import datetime
from typing import Callable, TypeVar
from urllib.parse import quote

from requests_toolbelt import MultipartEncoder
from urllib3.fields import RequestField

from agavefs.errors import (AgaveFSError, AlreadyExists, AuthError, InvalidArgument,
                            NotADirectory, NotFound, ProtocolError, Transient)
from agavefs.client.auth import TokenManager
from agavefs.client.credentials import Credentials
from agavefs.client.models import ClientStats, RemoteEntry, parse_entry, usable_name
from agavefs.client.paging import PageCaps, PageThreads, Shifted, collect
from agavefs.client.paths import SysPath, check_name
from agavefs.client.reading import ReadOps
from agavefs.client.responses import Redactor, parse_json, unwrap
from agavefs.client.staging import StagingOps
from agavefs.client.transport import IDEMPOTENT, SAFE, UPLOAD, Body, CountingReader, CountingStream, Transport

LIST_PAGE = 5000
# the listing fields parse_entry reads (the self entry's path included); the rest is not sent
LIST_FIELDS = "name,path,length,lastModified,type,format,mimeType,permissions"
PAGE_THREADS = 2  # listings paged at once, each one page ahead (list)
HEAD_MAX_AGE = 2.0  # seconds a big directory's first page (a lookup's) may start its listing
HEADS_MAX = 16  # such first pages kept at once
T = TypeVar("T")
UPLOAD_MIN_RATE = 512 * 1024  # bytes/s assumed when sizing an upload's deadline
STREAM_DEADLINE = 7 * 24 * 3600.0  # a streamed upload's retries (its producer bounds each wait)


def _multipart_frame(name: str) -> tuple[bytes, bytes, str]:
    """(bytes before the file's content, bytes after it, Content-Type) of the form
    ``upload`` sends (fields fileName and fileToUpload), headers encoded as
    requests-toolbelt encodes them."""
    boundary = uuid.uuid4().hex
    parts = []
    for field, content_type in ((RequestField("fileName", name), None),
                                (RequestField("fileToUpload", b"", filename=name), "application/octet-stream")):
        field.make_multipart(content_type=content_type)
        parts.append(f"--{boundary}\r\n".encode() + field.render_headers().encode("utf-8"))
    head = parts[0] + name.encode("utf-8") + b"\r\n" + parts[1]
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"

_insecure_warned = False
_insecure_lock = threading.Lock()


def resolve_verify(ca_bundle: str | None, insecure: bool, log: logging.Logger):
    """``verify=`` for requests: False (loudly), a CA file, or True (system CAs,
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` applied by requests itself)."""
    global _insecure_warned
    if insecure:
        with _insecure_lock:
            if not _insecure_warned:
                _insecure_warned = True
                log.warning("TLS certificate verification is OFF (--insecure): anyone on the "
                            "network path can read and change your data and steal your token")
        import urllib3

        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        return False
    if ca_bundle:
        if not os.path.isfile(ca_bundle):
            raise InvalidArgument(f"CA bundle {ca_bundle} does not exist")
        return ca_bundle
    return True


def _entry_key(raw: object):
    return raw.get("name") if isinstance(raw, dict) else repr(raw)


class _Head:
    """The first page of a directory's listing, brought by a lookup, that a listing
    may continue (see the module note)."""
    __slots__ = ("me", "children", "offset", "last", "taken", "changes")

    def __init__(self, me: RemoteEntry, children: list[RemoteEntry], offset: int, last: object,
                 changes: int):
        self.me = me
        self.children = children
        self.offset = offset  # the index the listing continues at
        self.last = last  # the raw item before it, which the next page must repeat
        self.taken = time.monotonic()
        self.changes = changes  # Transport.changes when its request was sent


class AgaveClient(ReadOps, StagingOps):
    def __init__(self, credentials: Credentials, *, system_id: str | None = None,
                 ca_bundle: str | None = None, insecure: bool = False, workers: int = 8,
                 connect_timeout: float = 10, read_timeout: float = 60, op_timeout: float = 30,
                 logger: logging.Logger | None = None, page_size: int = LIST_PAGE):
        if not credentials.baseurl:
            raise AuthError("the credentials have no baseurl; log in with `agavefs login`")
        self.credentials = credentials
        self.log = logger or logging.getLogger("agavefs.client")
        self.base_url = credentials.baseurl.rstrip("/")
        self.page_size = max(2, int(page_size))
        self.stats = ClientStats()
        self.redact = Redactor()
        self.transport = Transport(self.base_url, verify=resolve_verify(ca_bundle, insecure, self.log),
                                   workers=workers, connect_timeout=connect_timeout,
                                   read_timeout=read_timeout, op_timeout=op_timeout,
                                   logger=self.log, stats=self.stats, redact=self.redact)
        self.tokens = TokenManager(credentials, self.transport, logger=self.log)
        self.transport.auth = self.tokens
        self._sys_lock = threading.Lock()
        self._pages = PageThreads(PAGE_THREADS, "agavefs-pages")  # next listing pages
        self._system_id = system_id
        self._systems: dict[str, dict] = {}
        self._list_caps = PageCaps()
        self._learned_pages: dict | None = None
        self._heads_lock = threading.Lock()
        self._heads: OrderedDict[str, _Head] = OrderedDict()  # directory -> its kept first page
        self._init_staging()

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def system_id(self) -> str:
        if self._system_id is None:
            with self._sys_lock:
                if self._system_id is None:
                    self._system_id = self._default_system()
        return self._system_id

    @property
    def username(self) -> str:
        return self.credentials.username

    def _url(self, service: str, sp: SysPath) -> str:
        return f"/files/v2/{service}/system/{quote(self.system_id, safe='')}{sp.url_part()}"

    @staticmethod
    def _label(sp: SysPath) -> str:
        return str(sp) or "~"

    def _get_json(self, path: str, kind: str, label: str, params=None, deadline=None):
        resp = self.transport.request("GET", path, kind=kind, label=label, params=params,
                                      deadline=deadline)
        return unwrap(resp.content, f"GET {label}")

    def _media_get(self, sp: SysPath, headers: dict):
        return self.transport.request("GET", self._url("media", sp), kind="read",
                                      label=self._label(sp), headers=headers, stream=True,
                                      passthrough=(416,))

    def close(self) -> None:
        self._pages.close()
        self.transport.close()

    def __enter__(self) -> "AgaveClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def token_expires_at(self) -> datetime | None:
        return self.tokens.expires_at()

    # -- profile and systems -------------------------------------------------------------
    def profile(self) -> dict:
        result = self._get_json("/profiles/v2/me", "profile", "/profiles/v2/me")
        if not isinstance(result, dict):
            raise ProtocolError("GET /profiles/v2/me: the result is not an object")
        return result

    def systems(self, **filters) -> list[dict]:
        params = {k: ("true" if v is True else "false" if v is False else v)
                  for k, v in filters.items()}
        result = self._get_json("/systems/v2", "system", "/systems/v2", params=params or None)
        if result is None:
            return []
        if not isinstance(result, list):
            raise ProtocolError("GET /systems/v2: the result is not a list")
        return [s for s in result if isinstance(s, dict)]

    def _default_system(self) -> str:
        for filters in ({"type": "STORAGE", "default": True}, {"type": "STORAGE"}):
            for s in self.systems(**filters):
                if isinstance(s.get("id"), str) and str(s.get("type", "STORAGE")).upper() == "STORAGE":
                    self.log.info("using storage system %s", s["id"])
                    return s["id"]
        raise NotFound("no storage system is available to this user")

    def system(self, system_id: str | None = None) -> dict:
        sid = system_id or self.system_id
        with self._sys_lock:
            cached = self._systems.get(sid)
        if cached is not None:
            return cached
        result = self._get_json("/systems/v2/" + quote(sid, safe=""), "system", f"/systems/v2/{sid}")
        if not isinstance(result, dict):
            raise ProtocolError(f"GET /systems/v2/{sid}: the result is not an object")
        with self._sys_lock:
            self._systems[sid] = result
        return result

    def home_dir(self) -> str:
        """Absolute system path of the system's homeDir (e.g. "/home")."""
        storage = self.system().get("storage")
        home = storage.get("homeDir") if isinstance(storage, dict) else None
        if not isinstance(home, str):
            return "/"
        return str(SysPath.parse("/" + home.strip("/"))) if home.strip("/") else "/"

    # -- listings ---------------------------------------------------------------------------
    def _list_fetcher(self, sp: SysPath, kind: str, deadline=None):
        url, label = self._url("listings", sp), self._label(sp)

        def fetch(offset: int, limit: int) -> list:
            resp = self.transport.request("GET", url, kind=kind, label=label,
                                          params={"offset": offset, "limit": limit, "filter": LIST_FIELDS},
                                          deadline=deadline)
            result = unwrap(resp.content, f"GET {label}")
            if not isinstance(result, list):
                raise ProtocolError(f"GET {label}: the listing is not a list")
            return result

        return fetch

    def _self_entry(self, sp: SysPath, raw: object) -> RemoteEntry:
        entry = parse_entry(raw, fallback_path=str(sp) if sp.absolute else None)
        path = str(sp) if sp.absolute else entry.path
        name = sp.name or path.rstrip("/").rsplit("/", 1)[-1] or "/"
        return entry.renamed(name, path or "/")

    def stat(self, path: str, *, deadline: float | None = None) -> RemoteEntry:
        """One listing request (limit=1): the file, or the directory itself."""
        sp = SysPath.parse(path)
        page = self._list_fetcher(sp, "stat", deadline)(0, 1)
        if not page:
            raise ProtocolError(f"GET {self._label(sp)}: empty listing")
        return self._self_entry(sp, page[0])

    def listing_pages(self) -> dict | None:
        """The longest listing page known to this client ({"system", "path", "offset",
        "length"}): its own, or the one ``learn_listing_pages`` gave it unless that failed
        its check.  For a later client of the same server; None when it knows none."""
        known = [] if self._list_caps.hint_ok is False or self._learned_pages is None \
            else [self._learned_pages]
        longest = self._list_caps.longest
        if longest is not None:
            length, (path, offset) = longest
            known.append({"system": self.system_id, "path": path, "offset": offset, "length": length})
        return max(known, key=lambda r: r["length"], default=None)

    def learn_listing_pages(self, record: object) -> bool:
        """Take what ``listing_pages`` gave an earlier client as a hint that short pages are
        ends (paging.py: checked by fetching that page again before it is relied on).  A
        record of another system, or not well formed, is ignored (False)."""
        try:
            system, path = record["system"], record["path"]
            offset, length = int(record["offset"]), int(record["length"])
            sp = SysPath.parse(path)
        except (TypeError, KeyError, ValueError, AgaveFSError):
            return False
        if system != self.system_id or offset < 0 or length < 2:
            return False
        fetch = self._list_fetcher(sp, "list")
        self._list_caps.hint(length, lambda n: len(fetch(offset, n)))
        self._learned_pages = {"system": system, "path": str(sp), "offset": offset, "length": length}
        return True

    def list(self, path: str, convert: Callable[[RemoteEntry], T] | None = None
             ) -> tuple[RemoteEntry, list[RemoteEntry] | list[T]]:
        """(the directory itself, its children) over all pages; each child passed through
        ``convert`` when given.  A page is parsed (and converted) while the next one is on
        its way (paging.collect)."""
        sp = SysPath.parse(path)
        head = self._take_head(str(sp))
        if head is not None:
            rest = self._list_after(sp, head, convert)
            if rest is not None:
                first = head.children if convert is None else [convert(c) for c in head.children]
                return head.me, first + rest
        parent: list[RemoteEntry] = []  # the directory's own entry, once seen

        def parse(items: list, index: int) -> list:
            if index == 0:  # the first page (again, after a restart): the directory itself
                me = self._self_entry(sp, items[0])
                if not me.is_dir:
                    raise NotADirectory(f"list {self._label(sp)}: not a directory")
                parent[:] = [me]
                items = items[1:]
            return self._children(sp, parent[0], items, convert)

        children = self._collect_listing(sp, parse)
        if not parent:
            raise ProtocolError(f"GET {self._label(sp)}: empty listing")
        return parent[0], children

    def _collect_listing(self, sp: SysPath, convert: Callable[[list, int], list], **kw) -> list:
        """paging.collect over the listing of ``sp`` in pages of ``page_size``, the next
        page asked for while one is converted; ``kw``: where it starts (start, after)."""
        return collect(self._list_fetcher(sp, "list"), self._list_caps, self.page_size,
                       key=_entry_key, source=str(sp), convert=convert, submit=self._pages.submit, **kw)

    def _list_after(self, sp: SysPath, head: _Head, convert) -> list | None:
        """The children after ``head``, converted; None when the directory shifted
        before the head's end (it is then listed from the start)."""
        names = {c.name for c in head.children}  # a name is listed once
        try:
            return self._collect_listing(sp, lambda items, _: self._children(sp, head.me, items, convert, names),
                                         start=head.offset, after=head.last)
        except Shifted:
            self.log.debug("listing of %s: changed since its first page; from the start",
                           self._label(sp))
            return None

    def _keep_head(self, key: str, head: _Head) -> None:
        with self._heads_lock:
            if head.changes != self.transport.changes:
                return  # something may have changed meanwhile: its entries may be older
            self._heads[key] = head
            self._heads.move_to_end(key)
            while len(self._heads) > HEADS_MAX:
                self._heads.popitem(last=False)

    def _take_head(self, key: str) -> _Head | None:
        with self._heads_lock:
            head = self._heads.pop(key, None)
        if head is None or head.changes != self.transport.changes \
                or time.monotonic() - head.taken > HEAD_MAX_AGE:
            return None
        return head

    def stat_with_children(self, path: str, children: int, *, deadline: float | None = None
                           ) -> tuple[RemoteEntry, list[RemoteEntry], bool]:
        """``stat`` in one request that also brings up to ``children`` of a directory's
        entries (the first page of its listing; none for a file), and whether they are
        all of them.  They are when the page is the listing's end by the rules of
        ``list`` (paging.py: a page shorter than asked, and not one the server may have
        cut at its cap; this can cost the one check of a hint, which the directory's
        listing would have made).  Otherwise it is not the whole listing: what is
        missing from it says nothing."""
        sp = SysPath.parse(path)
        limit = max(1, children + 1)
        changes = self.transport.changes
        page = self._list_fetcher(sp, "stat", deadline)(0, limit)
        if not page:
            raise ProtocolError(f"GET {self._label(sp)}: empty listing")
        me = self._self_entry(sp, page[0])
        if not me.is_dir:
            self._list_caps.seen(len(page), (str(sp), 0))  # a page that long: paging.py
            return me, [], False
        more, ambiguous = self._list_caps.maybe_more(len(page), limit, (str(sp), 0))
        kids = self._children(sp, me, page[1:children + 1])
        if more and not ambiguous and len(page) == limit > 1:
            # a full page: the start of the listing a readdir is about to ask for
            self._keep_head(str(sp), _Head(me, kids, len(page), page[-1], changes))
        return me, kids, not more

    def _children(self, sp: SysPath, me: RemoteEntry, raw: list,
                  convert: Callable[[RemoteEntry], object] | None = None,
                  names: set[str] | None = None) -> list:
        """A directory's listing entries after its own, each with its full path (and
        passed through ``convert`` when given); unusable and repeated names are left out
        (logged).  ``names``: those already listed (added to as entries are taken)."""
        base = me.path.rstrip("/")
        children: list = []
        names = set() if names is None else names
        dropped = 0
        for item in raw:
            entry = parse_entry(item, parent=base)
            if not usable_name(entry.name) or entry.name in names:
                dropped += 1
                continue
            names.add(entry.name)
            children.append(entry if convert is None else convert(entry))
        if dropped:
            self.log.warning("listing of %s: ignored %d entries with unusable or repeated names",
                             self._label(sp), dropped)
        return children

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except NotFound:
            return False

    # -- changes ------------------------------------------------------------------------------
    def _manage(self, sp: SysPath, form: dict, retry: str, label: str, deadline=None):
        return self.transport.request("PUT", self._url("media", sp), kind="manage", label=label,
                                      data=form, retry=retry, deadline=deadline)

    def mkdir(self, path: str) -> bool:
        """True when created, False when a directory was already there."""
        sp = SysPath.parse(path)
        if sp.is_top:
            return False
        label = self._label(sp)
        try:
            resp = self._manage(sp.parent(), {"action": "mkdir", "path": sp.name}, IDEMPOTENT, label)
        except AgaveFSError as exc:
            if exc.status != 400:
                raise
            try:
                entry = self.stat(str(sp))
            except NotFound:
                raise exc from None
            if not entry.is_dir:
                raise AlreadyExists(f"mkdir {label}: a file is in the way", status=400) from None
            return bool(getattr(exc, "maybe_acted", False))
        if resp.status_code == 201:
            return True
        message = self._message(resp)
        if "exist" in message.lower():
            return bool(getattr(resp, "maybe_acted", False))
        return True

    @staticmethod
    def _message(resp) -> str:
        try:
            data = parse_json(resp.content)
        except ProtocolError:
            return ""
        return data.get("message", "") if isinstance(data, dict) and isinstance(
            data.get("message"), str) else ""

    def _once(self, act, done, what: str) -> None:
        """Run a non-idempotent action; after an ambiguous failure ask ``done()``
        before repeating it."""
        deadline = self.transport.deadline()
        unsure = False
        delay = 0.1
        while True:
            try:
                act(deadline)
                return
            except Transient as exc:
                if not getattr(exc, "ambiguous", False) or time.monotonic() >= deadline:
                    raise
                unsure = True
                self.log.info("%s: outcome unknown (%s); checking", what, exc.message)
            except (AlreadyExists, NotFound):
                if unsure and done():
                    return
                raise
            try:
                if done():
                    self.log.info("%s: it had happened", what)
                    return
            except Transient:
                pass
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2.0, delay * 2)

    def rename(self, path: str, new_name: str) -> None:
        """Rename within the same directory (400 "exists" -> AlreadyExists)."""
        sp = SysPath.parse(path)
        check_name(new_name)
        if sp.is_top:
            raise InvalidArgument("cannot rename the root or home directory")
        target = sp.parent().child(new_name)
        label = self._label(sp)
        self._once(lambda d: self._manage(sp, {"action": "rename", "path": new_name}, SAFE,
                                          label, d),
                   lambda: self.exists(str(target)) and not self.exists(str(sp)),
                   f"rename {label} -> {new_name}")
        self._forget_history(str(sp))

    def move(self, path: str, dest_path: str) -> None:
        """Move to ``dest_path`` (a full path), verified with listings."""
        src, dst = SysPath.parse(path), SysPath.parse(dest_path)
        if src.is_top or dst.is_top:
            raise InvalidArgument("cannot move the root or home directory")
        label = f"{self._label(src)} -> {dst}"

        def done() -> bool:
            return self.exists(str(dst)) and not self.exists(str(src))

        for attempt in range(3):
            self._once(lambda d: self._manage(src, {"action": "move", "path": str(dst)}, SAFE,
                                              f"move {label}", d), done, f"move {label}")
            for _ in range(5):
                if done():
                    self._forget_history(str(src))
                    return
                time.sleep(0.1)
            self.log.info("move %s: answered success but did not happen; again", label)
            if not self.exists(str(src)):
                break
        raise Transient(f"PUT move {label}: the server reported success but the move did not "
                        f"happen")

    def copy(self, path: str, dest_path: str) -> None:
        src, dst = SysPath.parse(path), SysPath.parse(dest_path)
        if dst.is_top:
            raise InvalidArgument("cannot copy onto the root or home directory")
        self._manage(src, {"action": "copy", "path": str(dst)}, IDEMPOTENT,
                     f"copy {self._label(src)} -> {dst}")

    def delete(self, path: str) -> None:
        """Delete (recursively for a directory)."""
        sp = SysPath.parse(path)
        if sp.is_top:
            raise InvalidArgument("refusing to delete the root or home directory")
        try:
            self.transport.request("DELETE", self._url("media", sp), kind="delete",
                                   label=self._label(sp))
        except NotFound as exc:
            if not getattr(exc, "maybe_acted", False):
                raise
        self._forget_history(str(sp))

    # -- upload ----------------------------------------------------------------------------
    def upload(self, local_path: str, remote_dir: str, name: str, *, progress=None) -> dict:
        """Stream ``local_path`` to ``remote_dir/name`` (multipart, constant memory).

        Returns Agave's result (status STAGING_QUEUED): the bytes are *not* stored
        yet; use ``wait_staged``.  ``progress(sent, total)`` is called as it goes.
        """
        d = SysPath.parse(remote_dir)
        check_name(name)
        size = os.stat(local_path).st_size
        label = self._label(d.child(name))

        def body() -> Body:
            f = open(local_path, "rb")
            try:
                enc = MultipartEncoder(fields=[
                    ("fileName", name),
                    ("fileToUpload", (name, f, "application/octet-stream")),
                ])
                reader = CountingReader(enc, enc.len, progress, self.stats)
            except BaseException:
                f.close()
                raise
            return Body(reader, {"Content-Type": enc.content_type}, reader, f.close)

        deadline = self.transport.deadline(self.transport.op_timeout + size / UPLOAD_MIN_RATE)
        resp = self.transport.request("POST", self._url("media", d), kind="upload", label=label,
                                      body=body, retry=UPLOAD, deadline=deadline)
        return self._upload_result(resp, label, name)

    def upload_stream(self, chunks, remote_dir: str, name: str) -> dict:
        """Upload bytes that are still being produced (a file being written): the
        multipart body goes out with chunked transfer encoding as ``chunks()`` yields.

        ``chunks()`` is called once per attempt and yields the content from its first
        byte; an exception it raises ends the upload at once and propagates (the
        server never gets the end of the body, so it stores nothing).  Like ``upload``,
        returns the STAGING_QUEUED result.  A server that refuses bodies of unknown
        length answers an error (HTTP 411, or Agave's 400 for any multipart problem).
        """
        d = SysPath.parse(remote_dir)
        check_name(name)
        label = self._label(d.child(name))

        def body() -> Body:
            head, tail, content_type = _multipart_frame(name)
            stream = CountingStream(itertools.chain((head,), chunks(), (tail,)), self.stats)
            return Body(stream, {"Content-Type": content_type}, stream)

        # the body lasts as long as its producer: each wait for bytes is bounded there
        deadline = self.transport.deadline(STREAM_DEADLINE)
        resp = self.transport.request("POST", self._url("media", d), kind="upload", label=label,
                                      body=body, retry=UPLOAD, deadline=deadline)
        return self._upload_result(resp, label, name)

    @staticmethod
    def _upload_result(resp, label: str, name: str) -> dict:
        result = unwrap(resp.content, f"POST {label}")
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise ProtocolError(f"POST {label}: the upload answer is not an object")
        stored = result.get("name")
        if isinstance(stored, str) and stored != name:
            # waiting for `name` would never end: fail early and say why
            raise ProtocolError(f"POST {label}: the server stored the upload under another "
                                f"name ({stored!r})")
        return result
