"""HTTP handlers of the files service: ``/files/v2/{listings,media,history,pems}/...``.

Design note.  Each route exists in its ``system/{id}/PATH`` form and in its
default-system form (``/files/v2/listings/PATH``).  After the system id, ONE slash
means PATH is relative to the system's homeDir (/home), TWO slashes (or a default-
system PATH starting with "/") mean PATH is absolute under rootDir.  The URL path was
already percent-decoded (``%2F`` is a "/").  Parsing of the path and of the common
paging parameters (limit default 100, ``--max-page`` caps it) happens here; the rules
are in ``files.py``/``manage.py``.  Uploads are streamed by ``multipart.py`` into a
temp file under the state dir: nothing of the body is held in memory.  No locks here.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from email.utils import formatdate

from .errors import AgaveError
from .files import PAGE_DEFAULT, Download, mime_type
from .multipart import MultipartError, parse as parse_multipart
from .paths import normalize
from .responses import FileBody, Response, success

SERVICES = {
    "listings": ("GET",),
    "media": ("GET", "HEAD", "POST", "PUT", "DELETE"),
    "history": ("GET",),
    "pems": ("GET", "POST", "DELETE"),
}


def routes(app) -> list:
    out = []
    for svc, methods in SERVICES.items():
        handlers = {m: _bind(app, svc, m) for m in methods}
        out.append((re.compile(rf"/files/v2/{svc}(?:/(?P<rest>.*))?", re.S), handlers))
    return out


def _bind(app, svc: str, method: str):
    fn = globals()[f"{svc}_{method.lower()}"]

    def handler(req, rest=None):
        user = app.bearer(req)
        apath = resolve_url_path(app, rest or "")
        return fn(app, req, user, apath)
    return handler


def resolve_url_path(app, rest: str) -> str:
    """``system/ID/rel``, ``system/ID//abs``, ``rel`` or ``/abs`` -> an Agave path."""
    sid = app.opts.system_id
    if rest.startswith("system/"):
        sid, _, rest = rest[len("system/"):].partition("/")
        if sid != app.opts.system_id:
            raise AgaveError(404, f"No system found for user with id {sid}")
    return normalize(rest)


def paging(app, req) -> tuple[int, int]:
    def number(name: str, default: int) -> int:
        raw = req.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise AgaveError(400, f"Invalid {name} value {raw!r}: a non-negative integer is expected") from None
        if value < 0:
            raise AgaveError(400, f"Invalid {name} value {raw!r}: a non-negative integer is expected")
        return value
    limit, offset = number("limit", PAGE_DEFAULT), number("offset", 0)
    if app.opts.max_page:
        limit = min(limit, app.opts.max_page)
    return limit, offset


# -- listings, history --------------------------------------------------------------------
def listings_get(app, req, user, apath):
    limit, offset = paging(app, req)
    return success(req.query, app.files.listing(user, apath, req.base, limit, offset))


def history_get(app, req, user, apath):
    limit, offset = paging(app, req)
    return success(req.query, app.files.history(user, apath, limit, offset))


# -- media --------------------------------------------------------------------------------
def _download_response(req, d: Download) -> Response:
    disposition = "attachment" if (req.query.get("force") or "").lower() == "true" else "inline"
    quoted = urllib.parse.quote(d.name, safe="")
    ascii_name = d.name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    headers = [
        ("Content-Type", mime_type(d.name)),
        ("Content-Length", str(d.length)),
        ("Last-Modified", formatdate(d.mtime, usegmt=True)),
        ("Accept-Ranges", "bytes"),
        ("Content-Disposition", f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"),
    ]
    if d.content_range:
        headers.append(("Content-Range", d.content_range))
    body = FileBody(d.file, d.offset, d.length) if d.file is not None else b""
    return Response(d.status, body, headers, content_type=None)  # HEAD keeps the file's length


def media_get(app, req, user, apath):
    return _download_response(req, app.files.download(user, apath, req.header("Range")))


def media_head(app, req, user, apath):
    return _download_response(req, app.files.download(user, apath, req.header("Range"), head=True))


def media_put(app, req, user, apath):
    status, message, result = app.manager.manage(user, apath, req.base, req.form())
    return success(req.query, result, message, status)


def media_delete(app, req, user, apath):
    app.manager.delete(user, apath)
    return success(req.query, None)


def media_post(app, req, user, apath):
    kind, params = req.content_type()
    if kind != "multipart/form-data":
        body = req.form()
        if body.get("urlToIngest"):
            raise AgaveError(501, "Importing from a URL (urlToIngest) is not supported by this server")
        raise AgaveError(400, "No file uploaded: send multipart/form-data with a fileToUpload part")
    mgr = app.manager
    mgr.upload_dir(user, apath)  # 404 / 400 before the body is read
    job_id, temp = mgr.new_temp()
    holder: dict = {}

    def sink(name, filename):
        if name == "fileToUpload" and "file" not in holder:
            holder["file"] = open(temp, "wb")
            return holder["file"]
        return None

    try:
        try:
            form = parse_multipart(req.input.read, params.get("boundary", ""), sink)
        finally:
            if "file" in holder:
                holder["file"].close()
        if "fileToUpload" not in form.files:
            if form.get("urlToIngest"):
                raise AgaveError(501, "Importing from a URL (urlToIngest) is not supported by this server")
            raise AgaveError(400, "No file uploaded")
        filename, size = form.files["fileToUpload"]
        result = mgr.accept_upload(user, req.base, apath, job_id, temp, size, form.get("fileName"), filename)
    except MultipartError as exc:
        _remove(temp)
        raise AgaveError(400, f"File upload failed: {exc}") from None
    except OSError as exc:
        _remove(temp)
        raise AgaveError(400, f"File upload failed: {exc.strerror or exc}") from None
    except BaseException:
        _remove(temp)
        raise
    return success(req.query, result, None, 202)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- pems -----------------------------------------------------------------------------------
def pems_get(app, req, user, apath):
    limit, offset = paging(app, req)
    return success(req.query, app.files.pems_list(user, apath, req.base, limit, offset))


def pems_post(app, req, user, apath):
    status, result = app.files.pems_update(user, apath, req.base, app.users, req.form())
    return success(req.query, result, None, status)


def pems_delete(app, req, user, apath):
    recursive = (req.query.get("recursive") or "").lower() == "true"
    app.files.pems_clear(user, apath, recursive)
    return success(req.query, None)
