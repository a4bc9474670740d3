"""Random open/write-at-offset/truncate/read/close/rename/unlink/fsync sequences on
the real mount, checked against an in-memory model after every step and after
remounts (``agavefs umount``, then the backing directory must equal the model).

File descriptors stay open across steps, so writes race with pending uploads,
renames of open files and rewrites; POSIX semantics the model encodes: a
descriptor follows its file through renames, and a file renamed over or unlinked
stays readable and writable through descriptors opened before.
"""

from __future__ import annotations

import os
import posixpath

from hypothesis import HealthCheck, settings, strategies as s
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

NAMES = ["a.txt", "b c.bin", "#d%", "ü"]


class MountModel(RuleBasedStateMachine):
    mount = None  # set by the test
    counter = 0

    def __init__(self):
        super().__init__()
        MountModel.counter += 1
        self.rel = f"run{MountModel.counter}"
        self.dir = self.mount.path / self.rel
        os.mkdir(self.dir)
        self.contents: dict[int, bytearray] = {}  # file identity -> bytes
        self.names: dict[str, int] = {}  # name -> identity
        self.fds: dict[int, int] = {}  # fd -> identity (read-write)
        self.rfds: dict[int, int] = {}  # fd -> identity (read-only)
        self.next_id = 0
        self.steps = 0

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _new_identity(self) -> int:
        self.next_id += 1
        self.contents[self.next_id] = bytearray()
        return self.next_id

    def teardown(self):
        for fd in [*self.fds, *self.rfds]:
            os.close(fd)
        self.fds.clear()
        self.rfds.clear()

    # -- rules -----------------------------------------------------------------
    @rule(name=s.sampled_from(NAMES), truncate=s.booleans())
    def open_file(self, name, truncate):
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        fd = os.open(self._path(name), flags, 0o644)
        if name not in self.names:
            self.names[name] = self._new_identity()
        ident = self.names[name]
        if truncate:
            self.contents[ident][:] = b""
        self.fds[fd] = ident

    @precondition(lambda self: self.names)
    @rule(data=s.data())
    def open_reader(self, data):
        name = data.draw(s.sampled_from(sorted(self.names)))
        fd = os.open(self._path(name), os.O_RDONLY)
        self.rfds[fd] = self.names[name]

    @precondition(lambda self: self.fds)
    @rule(data=s.data(), offset=s.integers(0, 3000), payload=s.binary(min_size=1, max_size=2000))
    def write(self, data, offset, payload):
        fd = data.draw(s.sampled_from(sorted(self.fds)))
        assert os.pwrite(fd, payload, offset) == len(payload)
        content = self.contents[self.fds[fd]]
        if offset > len(content):
            content.extend(b"\0" * (offset - len(content)))
        content[offset:offset + len(payload)] = payload

    @precondition(lambda self: self.fds)
    @rule(data=s.data(), length=s.integers(0, 4000))
    def truncate(self, data, length):
        fd = data.draw(s.sampled_from(sorted(self.fds)))
        os.ftruncate(fd, length)
        content = self.contents[self.fds[fd]]
        if length < len(content):
            del content[length:]
        else:
            content.extend(b"\0" * (length - len(content)))

    @precondition(lambda self: self.fds or self.rfds)
    @rule(data=s.data(), offset=s.integers(0, 4000), size=s.integers(0, 5000))
    def read(self, data, offset, size):
        fds = {**self.fds, **self.rfds}
        fd = data.draw(s.sampled_from(sorted(fds)))
        expected = bytes(self.contents[fds[fd]][offset:offset + size])
        assert os.pread(fd, size, offset) == expected

    @precondition(lambda self: self.fds or self.rfds)
    @rule(data=s.data())
    def close(self, data):
        fd = data.draw(s.sampled_from(sorted([*self.fds, *self.rfds])))
        os.close(fd)
        self.fds.pop(fd, None)
        self.rfds.pop(fd, None)

    @precondition(lambda self: self.fds)
    @rule(data=s.data())
    def fsync(self, data):
        fd = data.draw(s.sampled_from(sorted(self.fds)))
        os.fsync(fd)

    @precondition(lambda self: self.names)
    @rule(data=s.data(), dst=s.sampled_from(NAMES))
    def rename(self, data, dst):
        src = data.draw(s.sampled_from(sorted(self.names)))
        os.rename(self._path(src), self._path(dst))
        if src != dst:
            self.names[dst] = self.names.pop(src)

    @precondition(lambda self: self.names)
    @rule(data=s.data())
    def unlink(self, data):
        # open or not: descriptors open on it keep reading and writing it (POSIX)
        name = data.draw(s.sampled_from(sorted(self.names)))
        os.unlink(self._path(name))
        del self.names[name]

    @precondition(lambda self: self.steps >= 8)  # remounts cost a second or two: not every step
    @rule()
    def remount(self):
        self.steps = 0
        self.teardown()
        r = self.mount.umount()
        assert r.returncode == 0, r.stderr
        backing = self.mount.emu.home() / self.rel
        on_server = {p.name: p.read_bytes() for p in backing.iterdir()}
        # mounted again before the check: a failing example must leave a mount for
        # hypothesis to replay and shrink it on (else it only reports "not mounted")
        self.mount.start()
        assert on_server == {n: bytes(self.contents[i]) for n, i in self.names.items()}

    # -- the check after every step ----------------------------------------------
    @invariant()
    def mount_shows_the_model(self):
        self.steps += 1
        listed = set(os.listdir(self.dir))
        assert listed == set(self.names), (listed, set(self.names))
        for name, ident in self.names.items():
            with open(self._path(name), "rb") as f:
                assert f.read() == bytes(self.contents[ident]), name
            assert os.stat(self._path(name)).st_size == len(self.contents[ident])


def test_random_sequences_against_a_model(mount_factory, emulator_factory):
    emu = emulator_factory("--staging-delay", "0.3")
    MountModel.mount = mount_factory(emu)
    runner = MountModel.TestCase()
    # AGAVEFS_MODEL_EXAMPLES=N for a longer hunt than CI's
    runner.settings = settings(max_examples=int(os.environ.get("AGAVEFS_MODEL_EXAMPLES", "10")),
                               stateful_step_count=30, deadline=None,
                               suppress_health_check=list(HealthCheck))
    runner.runTest()
    r = MountModel.mount.umount()
    assert r.returncode == 0, r.stderr
    leftovers = [p for p in emu.home().rglob("*") if p.name.startswith(".agavefs~")]
    assert leftovers == []


def test_names_are_kept_exactly(mnt):
    # the model's names include spaces, '#', '%' and UTF-8
    for name in NAMES:
        (mnt.path / name).write_bytes(name.encode())
    mnt.umount()
    assert sorted(p.name for p in mnt.emu.home().iterdir()) == sorted(NAMES)
    assert all((mnt.emu.home() / n).read_bytes() == n.encode() for n in NAMES)
    assert posixpath.sep not in "".join(NAMES)
