"""Persistent state of the embedded Agave server, in one SQLite file (stdlib sqlite3).

Design note.  Tables: ``clients`` (OAuth applications, secret stored as sha256),
``sessions`` (one row per password grant: access and refresh token, both as sha256;
a refresh rewrites the row, so the old pair dies), ``history`` (file events keyed by
Agave path, re-keyed on rename/move, id order = oldest first), ``grants`` (pems), and
``staging`` (jobs accepted but not yet copied; rows left at start-up belonged to a
server that stopped, and become STAGING_FAILED).

Concurrency: one connection in autocommit mode, WAL journal, synchronous=NORMAL (no
fsync per commit, so the DOWNLOAD event written on each download costs tens of
microseconds).  ``_lock`` (a plain Lock) serialises every use of the connection; no
method calls another public method while holding it, and nothing else is done under
it.  Subtree queries use the range [p + "/", p + "0") since "0" follows "/" in code
point order.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    owner TEXT NOT NULL, name TEXT NOT NULL, description TEXT, tier TEXT, callback_url TEXT,
    consumer_key TEXT NOT NULL UNIQUE, secret_hash TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, username TEXT NOT NULL, consumer_key TEXT NOT NULL,
    access_hash TEXT NOT NULL UNIQUE, access_expires REAL NOT NULL,
    refresh_hash TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, created_by TEXT, description TEXT);
CREATE INDEX IF NOT EXISTS history_path ON history (path, id);
CREATE TABLE IF NOT EXISTS grants (
    path TEXT NOT NULL, username TEXT NOT NULL, permission TEXT NOT NULL,
    recursive INTEGER NOT NULL, PRIMARY KEY (path, username));
CREATE INDEX IF NOT EXISTS grants_user ON grants (username);
CREATE TABLE IF NOT EXISTS staging (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, temp TEXT NOT NULL, username TEXT NOT NULL,
    size INTEGER NOT NULL, queued REAL NOT NULL);
"""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _subtree(column: str) -> str:
    return f"({column} = ? OR ({column} >= ? AND {column} < ?))"


def _subtree_args(top: str) -> tuple[str, str, str]:
    base = top.rstrip("/")
    return top, base + "/", base + "0"


class State:
    def __init__(self, path: str):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- clients ---------------------------------------------------------------
    def client_create(self, owner: str, name: str, description: str, tier: str, callback: str,
                      key: str, secret: str) -> bool:
        try:
            self._run("INSERT INTO clients VALUES (?,?,?,?,?,?,?,?)",
                      (owner, name, description, tier, callback, key, digest(secret), time.time()))
            return True
        except sqlite3.IntegrityError:
            return False

    def clients_of(self, owner: str, name: str | None = None) -> list[dict]:
        sql = "SELECT name, description, tier, callback_url, consumer_key FROM clients WHERE owner = ?"
        args: tuple = (owner,)
        if name is not None:
            sql, args = sql + " AND name = ?", (owner, name)
        rows = self._all(sql + " ORDER BY created", args)
        return [dict(zip(("name", "description", "tier", "callbackUrl", "consumerKey"), r)) for r in rows]

    def client_delete(self, owner: str, name: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT consumer_key FROM clients WHERE owner = ? AND name = ?",
                                   (owner, name)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM sessions WHERE consumer_key = ?", (row[0],))
            self._db.execute("DELETE FROM clients WHERE consumer_key = ?", (row[0],))
            return True

    def client_check(self, key: str, secret: str) -> bool:
        rows = self._all("SELECT secret_hash FROM clients WHERE consumer_key = ?", (key,))
        return bool(rows) and rows[0][0] == digest(secret)

    # -- tokens ----------------------------------------------------------------
    def session_create(self, username: str, key: str, access: str, expires: float, refresh: str) -> None:
        self._run("INSERT INTO sessions (username, consumer_key, access_hash, access_expires,"
                  " refresh_hash, created) VALUES (?,?,?,?,?,?)",
                  (username, key, digest(access), expires, digest(refresh), time.time()))

    def session_user(self, access: str) -> tuple[str, float] | None:
        rows = self._all("SELECT username, access_expires FROM sessions WHERE access_hash = ?",
                         (digest(access),))
        return (rows[0][0], rows[0][1]) if rows else None

    def session_rotate(self, key: str, refresh: str, access: str, expires: float,
                       new_refresh: str) -> str | None:
        """Replace both tokens of the session holding ``refresh``; returns its user."""
        with self._lock:
            row = self._db.execute("SELECT id, username FROM sessions WHERE refresh_hash = ?"
                                   " AND consumer_key = ?", (digest(refresh), key)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE sessions SET access_hash = ?, access_expires = ?, refresh_hash = ?"
                             " WHERE id = ?", (digest(access), expires, digest(new_refresh), row[0]))
            return row[1]

    def session_revoke(self, key: str, token: str) -> bool:
        h = digest(token)
        cur = self._run("DELETE FROM sessions WHERE consumer_key = ? AND (access_hash = ? OR refresh_hash = ?)",
                        (key, h, h))
        return cur.rowcount > 0

    # -- history ---------------------------------------------------------------
    def history_add(self, path: str, status: str, user: str | None, description: str) -> None:
        self._run("INSERT INTO history (path, status, created, created_by, description) VALUES (?,?,?,?,?)",
                  (path, status, time.time(), user, description))

    def history_list(self, path: str, limit: int, offset: int) -> list[dict]:
        rows = self._all("SELECT status, created, created_by, description FROM history WHERE path = ?"
                         " ORDER BY id LIMIT ? OFFSET ?", (path, limit, offset))
        return [dict(zip(("status", "created", "createdBy", "description"), r)) for r in rows]

    def history_exists(self, path: str) -> bool:
        return bool(self._all("SELECT 1 FROM history WHERE path = ? LIMIT 1", (path,)))

    def history_mark_deleted(self, top: str, user: str, description: str) -> None:
        """Append a DELETED event to every path of the subtree that has a history."""
        self._run("INSERT INTO history (path, status, created, created_by, description)"
                  f" SELECT DISTINCT path, 'DELETED', ?, ?, ? FROM history WHERE {_subtree('path')}",
                  (time.time(), user, description, *_subtree_args(top)))

    def rekey(self, old: str, new: str) -> None:
        """Move history and grants of the subtree ``old`` to ``new`` (rename/move)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("history", "grants"):
                    if table == "grants":  # the destination subtree must not keep stale grants
                        self._db.execute(f"DELETE FROM grants WHERE {_subtree('path')}", _subtree_args(new))
                    self._db.execute(f"UPDATE {table} SET path = ? || substr(path, ?) WHERE {_subtree('path')}",
                                     (new, len(old) + 1, *_subtree_args(old)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- grants ----------------------------------------------------------------
    def grant_set(self, path: str, username: str, permission: str, recursive: bool) -> None:
        self._run("INSERT OR REPLACE INTO grants VALUES (?,?,?,?)", (path, username, permission, int(recursive)))

    def grant_clear(self, path: str, username: str | None = None, recursive: bool = False) -> None:
        where = _subtree("path") if recursive else "path = ?"
        args: tuple = _subtree_args(path) if recursive else (path,)
        if username is not None:
            where, args = where + " AND username = ?", (*args, username)
        self._run(f"DELETE FROM grants WHERE {where}", args)

    def grants_on(self, path: str) -> list[tuple[str, str, bool]]:
        return [(u, p, bool(r)) for u, p, r in
                self._all("SELECT username, permission, recursive FROM grants WHERE path = ? ORDER BY username",
                          (path,))]

    def grants_of(self, username: str) -> dict[str, tuple[str, bool]]:
        return {p: (perm, bool(r)) for p, perm, r in
                self._all("SELECT path, permission, recursive FROM grants WHERE username = ?", (username,))}

    def grants_drop_subtree(self, top: str) -> None:
        self._run(f"DELETE FROM grants WHERE {_subtree('path')}", _subtree_args(top))

    # -- staging jobs ----------------------------------------------------------
    def job_add(self, job_id: str, path: str, temp: str, username: str, size: int) -> None:
        self._run("INSERT INTO staging VALUES (?,?,?,?,?,?)", (job_id, path, temp, username, size, time.time()))

    def job_done(self, job_id: str) -> None:
        self._run("DELETE FROM staging WHERE id = ?", (job_id,))

    def jobs_pending(self) -> list[dict]:
        rows = self._all("SELECT id, path, temp, username, size FROM staging ORDER BY queued")
        return [dict(zip(("id", "path", "temp", "username", "size"), r)) for r in rows]
