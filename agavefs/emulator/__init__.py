"""The embedded Agave v2 (Tapis v2) server, started by ``agavefs serve``.

Design note.  A faithful local stand-in for the Agave files, auth, profiles and
systems services, built from ``agave-api.md`` (quirks included) and checked against
the official SDK.  It shares no code with the agavefs client so that one can catch the
other's mistakes: nothing here imports from the rest of ``agavefs``.

Layout (imports point downward):

    errors, config      stdlib: AgaveError/FaultError/OAuthError, Options
    paths, state        path normalisation + safe mapping onto ROOT; SQLite state
    access              ownership by position (/home/NAME) + pems grants
    files, manage       the files service's rules (read side, write side)
    staging             the delayed, progressive background copy of uploads
    multipart           streaming multipart parser (uploads go straight to disk)
    responses           Agave envelopes, naked/pretty/filter, streamed file bodies
    app, files_api      WSGI routing and handlers
    server, tls         threaded keep-alive HTTP(S) server, access log, fault knobs

:class:`EmulatorServer` composes them: ``start()`` binds (port 0 = any) and serves in a
background thread, ``url`` and ``ca_file`` tell where and what to trust, ``stop()``
shuts down.  ``serve_until_signal()`` is the foreground loop of ``agavefs serve``.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import sys
import threading

from .config import Options

__all__ = ["EmulatorServer", "Options"]
log = logging.getLogger("agavefs.emulator")
STATE_DIR_NAME = ".agave-emulator"


class EmulatorServer:
    def __init__(self, opts: Options):
        self.opts = opts
        self.server = None
        self.state = None
        self.staging = None
        self.access_log = None
        self.ca_file: str | None = None
        self._thread: threading.Thread | None = None

    # -- paths -----------------------------------------------------------------------
    def _layout(self) -> tuple[str, str, str, list[str]]:
        root = os.path.realpath(os.path.abspath(self.opts.root))
        if root == "/":
            raise ValueError("--root / would serve the whole file system; give a directory")
        if self.opts.state:
            state_path = os.path.abspath(self.opts.state)
            workdir = state_path + ".d"
        else:
            workdir = os.path.join(root, STATE_DIR_NAME)
            state_path = os.path.join(workdir, "state.sqlite")
        hidden = [workdir] + [state_path + sfx for sfx in ("", "-wal", "-shm", "-journal")]
        return root, state_path, workdir, hidden

    def start(self) -> "EmulatorServer":
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "EmulatorServer":
        from .app import App
        from .files import FileService
        from .manage import Manager
        from .paths import Namespace
        from .server import AccessLog, Server
        from .staging import StagingQueue
        from .state import State

        opts = self.opts
        root, state_path, workdir, hidden = self._layout()
        if opts.access_log:
            self.access_log = AccessLog(opts.access_log)
        os.makedirs(root, exist_ok=True)
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(state_path), mode=0o700, exist_ok=True)
        staging_dir = os.path.join(workdir, "staging")
        os.makedirs(staging_dir, mode=0o700, exist_ok=True)
        ns = Namespace(root, hidden)
        for user in opts.users:
            home = os.path.join(root, "home", user)
            if ns.is_hidden(os.path.realpath(home)):
                raise ValueError(f"the state path {state_path} hides the home of {user}")
            os.makedirs(home, exist_ok=True)
        self.state = State(state_path)
        os.chmod(state_path, 0o600)
        files = FileService(ns, self.state, opts.system_id, opts.range_mode)
        manager = Manager(files, staging_dir, opts.delete_401)
        self.staging = StagingQueue(self.state, manager.open_for_staging, opts.staging_delay,
                                    opts.staging_workers, opts.staging_bps, opts.staging_fail_rate,
                                    opts.staging_lose_rate)
        manager.staging = self.staging
        failed = self.staging.recover()
        if failed:
            log.warning("%d upload(s) were still queued when the server last stopped: recorded STAGING_FAILED",
                        failed)
        for name in os.listdir(staging_dir):  # temp files no job refers to any more
            try:
                os.unlink(os.path.join(staging_dir, name))
            except OSError:
                pass
        self.staging.start()
        context = self._tls_context(workdir)
        app = App(opts, self.state, files, manager)
        try:
            self.server = Server(opts.host, opts.port, app, context, self.access_log, opts.latency_ms,
                                 opts.fail_rate)
            if 0.0 <= opts.truncate_body < 1.0:  # test-only knob (config.py)
                self.server.truncate_body = opts.truncate_body
        except SystemExit as exc:  # werkzeug exits on bind errors
            raise OSError(f"cannot listen on {opts.host}:{opts.port}") from exc
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="emulator-accept", daemon=True)
        self._thread.start()
        log.info("serving %s (system %s, root %s, users %s, state %s)", self.url, opts.system_id, root,
                 ", ".join(sorted(opts.users)), state_path)
        return self

    def _tls_context(self, workdir: str) -> ssl.SSLContext | None:
        if not self.opts.uses_tls:
            return None
        if self.opts.tls:
            from .tls import make_certificates
            self.ca_file, cert, key = make_certificates(os.path.join(workdir, "tls"), self.opts.host)
        else:
            cert, key = self.opts.tls_cert, self.opts.tls_key
            self.ca_file = os.path.abspath(cert)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        return context

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        host = self.opts.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.opts.uses_tls else 'http'}://{host}:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.close_connections()
            self.server.server_close()
            self.server = None
        if self.staging is not None:
            self.staging.stop()
            self.staging = None
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        self._close_state()

    def _close_state(self) -> None:
        if self.state is not None:
            self.state.close()
            self.state = None

    def serve_until_signal(self, out=sys.stdout) -> int:
        """Start, print the URL (and CA file), serve until SIGINT/SIGTERM; exit code 0."""
        stop = threading.Event()

        def on_signal(signum, frame):
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        from .server import keep_freed_memory

        if not keep_freed_memory():
            log.info("freed heap memory goes back to the kernel (no glibc mallopt)")
        try:
            self.start()
            print(self.url, file=out, flush=True)
            if self.ca_file:
                print(self.ca_file, file=out, flush=True)
            while not stop.wait(0.5):
                pass
            log.info("stopping")
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0
