"""The ``agavefs`` command line: the composition root.

Each command lives in its own module (``agavefs/cli/<command>.py``) exposing
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking
the parsed namespace and returning the exit code).  Command modules are imported
lazily so that ``agavefs serve`` never loads the client and ``agavefs mount`` never
loads the emulator.

``mount.fuse3`` (``mount -t fuse.agavefs SOURCE MOUNTPOINT -o OPTS``) runs this
program as ``agavefs SOURCE MOUNTPOINT -o OPTS``: an argument list whose first word
is not a command is therefore read as ``agavefs mount ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("agavefs.cli.serve", "run the embedded Agave v2 server over a local directory"),
    "login": ("agavefs.cli.login", "log in to an Agave gateway and write the credentials cache"),
    "mount": ("agavefs.cli.mount", "mount an Agave storage system (SYSTEM[:PATH]) on MOUNTPOINT"),
    "umount": ("agavefs.cli.umount", "finish pending uploads, then unmount MOUNTPOINT"),
    "status": ("agavefs.cli.status", "show live mounts: pending uploads, cache, requests, token"),
    "demo": ("agavefs.cli.demo", "start the embedded server, log in a demo user and mount it"),
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is empty (None, False, [], a -v count
    of 0) or the help text already says it ("(default: ...)")."""

    def _get_help_string(self, action):
        default = action.default
        if (default is None or default is False or default == [] or "(default" in (action.help or "")
                or isinstance(action, argparse._CountAction)):
            return action.help
        return super()._get_help_string(action)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from agavefs import __version__

    parser = argparse.ArgumentParser(
        prog="agavefs",
        description="Work with files on an Agave (Tapis v2) science gateway as if they were local.",
        epilog="Run 'agavefs COMMAND --help' for the options of each command.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"agavefs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            # keep every command listed in the top-level help without importing it
            sub.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            sub.add_parser(name, help=help_text + " (not available in this build)")
            continue
        module.register(sub, name, help_text, _Formatter)
    return parser


def _looks_like_mount_helper(argv: list[str]) -> bool:
    """``agavefs SOURCE MOUNTPOINT [-o OPTS]`` as called by mount.fuse3."""
    if not argv or argv[0].startswith("-") or argv[0] in COMMANDS:
        return False
    positional = [a for a in argv if not a.startswith("-")]
    return len(positional) >= 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _looks_like_mount_helper(argv):
        argv = ["mount", *argv]
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a sentence for people; the traceback only at -vv
        if getattr(args, "verbose", 0) >= 2:
            raise
        from agavefs.logs import LogFileError

        if isinstance(exc, LogFileError):  # a sentence that already says what to do
            print(f"agavefs {args.command}: {exc}", file=sys.stderr)
            return 1
        what = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename and exc.strerror \
            else str(exc) or type(exc).__name__
        print(f"agavefs {args.command}: {what} (run it again with -vv for the details)", file=sys.stderr)
        return 1
