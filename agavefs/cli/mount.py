"""``agavefs mount [SYSTEM[:PATH]] MOUNTPOINT``: parse, check, start the daemon.

Without ``--foreground`` the command starts the daemon (this same command with
``--foreground``) in a new session and returns once the mount is live, or prints
the daemon's error and exits non-zero.  ``mount.fuse3`` runs us as
``agavefs SOURCE MOUNTPOINT -o OPTS``; every long option below can also be given
in ``-o`` (``-o attr_ttl=30,read_only,upload_workers=8``), which is what fstab and
systemd mount units use.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time

from agavefs.vfs.options import Options

# mount(8)/fstab words that mean nothing to a FUSE daemon
HELPER_ONLY = {"_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "owner", "group",
               "defaults", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync",
               "atime", "noatime", "relatime", "strictatime", "comment", "x-systemd", "loop"}
# FUSE options we pass through to libfuse as they are
FUSE_PASSTHROUGH = {"default_permissions", "max_threads", "kernel_cache", "direct_io", "fsname", "subtype",
                    "noforget", "intr"}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="+", metavar="[SYSTEM[:PATH]] MOUNTPOINT",
                   help="storage system (default: your default storage system) and path on it "
                        "(default: your home folder on it; a leading / is an absolute path), "
                        "then the empty directory to mount on")
    g = p.add_argument_group("mount")
    g.add_argument("-f", "--foreground", action="store_true",
                   help="stay in front until unmounted (systemd Type=simple/notify); SIGINT/SIGTERM "
                        "drain pending uploads, then unmount")
    g.add_argument("--read-only", action="store_true", help="refuse every change with EROFS")
    g.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount (needs user_allow_other in /etc/fuse.conf "
                        "unless root); permissions are then enforced from the modes shown")
    g.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION[,OPTION...]",
                   help="mount options: FUSE options, mount(8) words (ignored: _netdev, nofail...), "
                        "or any long option of this command as name=value (attr_ttl=30, read_only)")
    g = p.add_argument_group("metadata cache")
    g.add_argument("--attr-ttl", type=float, default=Options.attr_ttl, metavar="SECONDS",
                   help="how long attributes are trusted (also the kernel's attribute timeout)")
    g.add_argument("--dir-ttl", type=float, default=Options.dir_ttl, metavar="SECONDS",
                   help="how long a directory listing is trusted; changes made elsewhere appear after it")
    g.add_argument("--negative-ttl", type=float, default=Options.negative_ttl, metavar="SECONDS",
                   help="how long 'no such file' is trusted")
    g.add_argument("--walk-ahead", type=int, default=Options.walk_ahead, metavar="N",
                   help="while find, du, rsync, ls -R... walk a tree, list up to N of the directories "
                        "they enter next in parallel (0: off)")
    g.add_argument("--prefetch-files", type=int, default=Options.prefetch_files, metavar="N",
                   help="while cat, grep -r, tar, cp -r... read the files of a folder one after the "
                        "other, fetch the next N small ones (up to 1 MiB) in parallel (0: off)")
    g = p.add_argument_group("files")
    g.add_argument("--uid", type=int, default=os.getuid(), help="owner shown for every file (default: your user id)")
    g.add_argument("--gid", type=int, default=os.getgid(), help="group shown for every file (default: your group id)")
    g.add_argument("--umask", type=lambda s: int(s, 8), default=Options.umask, metavar="MASK",
                   help="modes shown are 0777/0666 minus this octal mask (write bits also go where "
                        "Agave's permissions forbid writing) (default: %(default)03o)")
    g.add_argument("--strict", action="store_true",
                   help="fail chmod/chown/utimes on remote files with EPERM instead of accepting them")
    g = p.add_argument_group("write-back")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="spool and journal of pending uploads (default: $XDG_CACHE_HOME/agavefs/<mount>)")
    g.add_argument("--cache-max-size", type=parse_size, default=Options.cache_max_size, metavar="SIZE",
                   help="bound on the spool (e.g. 500M, 2T); writes wait for uploads when it is full "
                        f"(default: {Options.cache_max_size / 2**30:g}G)")
    g.add_argument("--upload-workers", type=int, default=Options.upload_workers, metavar="N",
                   help="uploads sent in parallel")
    g.add_argument("--sync-close", action="store_true",
                   help="close() waits until the server has the file (default: returns once the data "
                        "is safe in the local spool)")
    g.add_argument("--staging-timeout", type=float, default=Options.staging_timeout, metavar="SECONDS",
                   help="a server-side staging job that shows no progress for this long is lost: upload again")
    g = p.add_argument_group("network")
    g.add_argument("--op-timeout", type=float, default=Options.op_timeout, metavar="SECONDS",
                   help="every operation fails with EIO/ETIMEDOUT after this long when the server "
                        "does not answer (the mount stays alive)")
    g.add_argument("--ca-bundle", metavar="FILE", help="CA certificates to trust (else REQUESTS_CA_BUNDLE "
                                                      "or the system's)")
    g.add_argument("--insecure", action="store_true", help="do NOT verify TLS certificates (loud warning)")
    g.add_argument("--agave-cache-dir", metavar="DIR",
                   help="where 'agavefs login' wrote the credentials (default: $AGAVE_CACHE_DIR, "
                        "else ~/.agave)")
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: mounts, uploads, retries, refreshes; -vv: every HTTP request and FUSE call")
    g.add_argument("--log-file", metavar="FILE", help="write the log here (default: stderr; with no "
                                                      "--foreground and no --log-file, nowhere)")
    g.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


def register(sub, name, help_text, formatter_class) -> None:
    p = sub.add_parser(name, help=help_text, description=__doc__.split("\n\n")[1],
                       formatter_class=formatter_class)
    add_arguments(p)
    p.set_defaults(func=run)


class UsageError(Exception):
    pass


def apply_o_options(args: argparse.Namespace, parser_defaults: dict) -> list[str]:
    """Fold ``-o`` words into ``args``; returns the FUSE options to pass through."""
    fuse_opts: list[str] = []
    for group in args.options:
        for word in filter(None, (w.strip() for w in group.split(","))):
            key, _, value = word.partition("=")
            attr = key.replace("-", "_")
            if key in HELPER_ONLY or key.startswith("x-"):
                continue
            if key == "ro":
                args.read_only = True
            elif key in FUSE_PASSTHROUGH:
                fuse_opts.append(word)
            elif attr in parser_defaults and attr not in ("target", "options", "ready_fd", "func"):
                default = parser_defaults[attr]
                if isinstance(default, bool) or default is None and not value:
                    setattr(args, attr, True if not value else value.lower() not in ("0", "false", "no"))
                elif attr == "umask":
                    setattr(args, attr, int(value, 8))
                elif attr == "cache_max_size":
                    setattr(args, attr, parse_size(value))
                elif isinstance(default, int) and not isinstance(default, bool):
                    setattr(args, attr, int(value))
                elif isinstance(default, float):
                    setattr(args, attr, float(value))
                else:
                    setattr(args, attr, value)
            else:
                raise UsageError(f"unknown mount option {word!r}")
    return fuse_opts


def split_target(target: list[str]) -> tuple[str | None, str | None, str]:
    if len(target) == 1:
        return None, None, target[0]
    if len(target) != 2:
        raise UsageError("expected [SYSTEM[:PATH]] MOUNTPOINT")
    source, mountpoint = target
    if source.startswith("agavefs#"):
        source = source[len("agavefs#"):]
    system, sep, path = source.partition(":")
    return (system or None), (path if sep and path else None), mountpoint


def check_mountpoint(mountpoint: str) -> str | None:
    """None when ``mountpoint`` can be mounted on, else a sentence saying what to do."""
    try:
        os.statvfs(mountpoint)
        st = os.stat(mountpoint)
    except FileNotFoundError:
        return f"mount point {mountpoint} does not exist: create it with 'mkdir -p {mountpoint}'"
    except OSError as exc:
        if exc.errno in (107, 103):  # ENOTCONN, ECONNABORTED: a dead FUSE mount
            return (f"{mountpoint} is a stale mount whose daemon died: clear it with "
                    f"'fusermount3 -uz {mountpoint}' and mount again")
        return f"cannot use {mountpoint}: {exc.strerror}"
    import stat as stat_mod
    if not stat_mod.S_ISDIR(st.st_mode):
        return f"mount point {mountpoint} is not a directory"
    if os.path.ismount(mountpoint):
        return f"{mountpoint} is already a mount point: unmount it first ('agavefs umount {mountpoint}')"
    try:
        if os.listdir(mountpoint):
            return f"mount point {mountpoint} is not empty: use an empty directory"
    except PermissionError:
        return f"cannot read mount point {mountpoint}: permission denied"
    return None


def run(args: argparse.Namespace) -> int:
    parser_defaults = _defaults()
    try:
        fuse_opts = apply_o_options(args, parser_defaults)
        system, path, mountpoint = split_target(args.target)
    except (UsageError, ValueError) as exc:
        print(f"agavefs mount: {exc}", file=sys.stderr)
        return 2
    mountpoint = os.path.abspath(os.path.expanduser(mountpoint))
    problem = check_mountpoint(mountpoint)
    if problem:
        print(f"agavefs mount: {problem}", file=sys.stderr)
        return 1
    if args.insecure and args.ready_fd is None and (args.log_file or not args.foreground):
        # the daemon's own warning goes to its log: say it where the user is looking too
        print("agavefs mount: WARNING: TLS certificate verification is OFF (--insecure): anyone on the "
              "network path can read and change your data and steal your token", file=sys.stderr, flush=True)
    if args.foreground or args.ready_fd is not None:
        from agavefs.daemon import run_daemon
        _exit_now(run_daemon(args, system, path, mountpoint, fuse_opts))
    return _start_background(args)


def _exit_now(rc: int) -> None:
    """End the daemon process once run_daemon is done with everything (uploads drained
    or journaled, the spool settled, FUSE unmounted, what it learned saved).

    What is left is the interpreter's teardown of the daemon's heap (caches, clients,
    threads), 50-70 ms that ``agavefs umount`` would wait for (it returns when the
    daemon is gone, so that the cache directory is free for the next mount): skipped."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def _defaults() -> dict:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return vars(p.parse_args(["x"]))


def _start_background(args: argparse.Namespace) -> int:
    """Run this command again with --foreground in a new session; wait until it is live."""
    read_fd, write_fd = os.pipe()
    argv = [a for a in sys.argv[1:]]
    if not argv or argv[0] != "mount":
        argv = ["mount", *argv]
    argv += ["--ready-fd", str(write_fd)]
    log_target = open(args.log_file, "ab") if args.log_file else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "agavefs", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log_target, pass_fds=(write_fd,),
                            start_new_session=True, close_fds=True)
    os.close(write_fd)
    if log_target is not subprocess.DEVNULL:
        log_target.close()
    message = b""
    deadline = time.monotonic() + 120
    with os.fdopen(read_fd, "rb") as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.5)
            if ready:
                chunk = pipe.read1(4096)
                if not chunk:
                    break
                message += chunk
                if message.endswith(b"\n"):
                    break
            elif proc.poll() is not None:
                break
    text = message.decode(errors="replace").strip()
    if text == "READY":
        print(f"agavefs: mounted on {os.path.abspath(args.target[-1])} (pid {proc.pid}); "
              f"unmount with 'agavefs umount {args.target[-1]}'")
        return 0
    if not text:
        if proc.poll() is None:
            text = "the mount did not come up within 120 s"
            proc.terminate()
        else:
            text = f"the mount daemon exited with status {proc.returncode}"
            if args.log_file:
                text += f"; see {args.log_file}"
    print(f"agavefs mount: {text}", file=sys.stderr)
    return 1
