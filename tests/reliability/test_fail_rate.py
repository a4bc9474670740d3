"""``--fail-rate 0.2``: one request in five (token calls included) is answered 503.
A mixed tree goes in (cp -a, rsync -a) and out (cp -a), ``ls -lR`` lists it,
renames and deletes finish, everything byte-identical, the retries in the log."""

from __future__ import annotations

import os
import shutil

from relsupport import (count, digest_tree, injected_faults, make_tree, no_hidden, requests_served, run,
                        verify_tree)


def test_fail_rate_0_2_copy_rsync_ls_rename_delete(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory("--fail-rate", "0.2", "--staging-delay", "0.2")
    src = make_tree(tmp_path / "src", seed=11, files=24)
    m = mount_factory(emu)
    run("cp", "-a", src, m.path / "copy")
    run("rsync", "-a", f"{src}/", f"{m.path / 'synced'}/")
    listing = run("ls", "-lR", m.path).stdout
    assert "file 23 #%?+&.bin" in listing and "ünïcödé.txt" in listing
    out = tmp_path / "out"
    run("cp", "-a", m.path / "copy", out)  # and out again: every byte through ranged reads
    verify_tree(src, out)
    verify_tree(src, m.path / "synced")
    # renames (a file, a directory, across directories) and deletes
    os.rename(m.path / "copy" / "ünïcödé.txt", m.path / "copy" / "renamed.txt")
    os.rename(m.path / "copy" / "d1", m.path / "copy" / "d1-moved")
    os.rename(m.path / "synced" / "d0" / "e0", m.path / "copy" / "e0-from-synced")
    shutil.rmtree(m.path / "synced" / "d2")
    os.unlink(m.path / "copy" / "d0" / "e1" / "file 3 #%?+&.bin")
    os.rmdir(m.path / "copy" / "empty-dir")
    # the same changes on the model
    model = tmp_path / "model"
    shutil.copytree(src, model / "copy", symlinks=True)
    shutil.copytree(src, model / "synced", symlinks=True)
    os.rename(model / "copy" / "ünïcödé.txt", model / "copy" / "renamed.txt")
    os.rename(model / "copy" / "d1", model / "copy" / "d1-moved")
    os.rename(model / "synced" / "d0" / "e0", model / "copy" / "e0-from-synced")
    shutil.rmtree(model / "synced" / "d2")
    os.unlink(model / "copy" / "d0" / "e1" / "file 3 #%?+&.bin")
    os.rmdir(model / "copy" / "empty-dir")
    verify_tree(model, m.path)  # through the mount, before the uploads landed
    r = m.umount()
    assert r.returncode == 0, r.stderr + m.log_tail()
    verify_tree(model, emu.home())
    assert not no_hidden(emu.home())
    log = m.log_text()
    retries = log.count("retrying ")
    assert retries > 0, "no retry in the log"
    faults = injected_faults(emu)
    assert faults > 20
    count(ops_under_faults=requests_served(emu), faults_injected=faults)
    print(f"\nfail-rate 0.2: {requests_served(emu)} requests, {faults} answered 503, {retries} retries logged,"
          f" {len(digest_tree(model))} paths verified")
