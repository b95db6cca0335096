"""Temporaries of killed writers: found by name, in one listing, whatever the name's length; what is fsynced
so that a write survives a power loss."""

from __future__ import annotations

import errno
import os
import stat

from diffiml_cli.files import NAME_MAX, append_lines, atomic_write_bytes, remove_stale_temporaries, temporary_beside


def test_stale_temporaries_of_the_named_outputs_go_and_nothing_else(tmp_path):
    long_name = "x" * (NAME_MAX - 4) + ".png"  # too long for the plain prefix: its temporary uses a hash
    ours = [temporary_beside(tmp_path / name) for name in ("a_mask.png", "a_prob.png", long_name)]
    theirs = temporary_beside(tmp_path / "b_mask.png")  # another image's, perhaps being written right now
    kept = [tmp_path / "a_mask.png", tmp_path / ".a_mask.png.notes.txt"]
    for path in kept:
        path.write_bytes(b"x")
    remove_stale_temporaries(tmp_path, ["a_mask.png", "a_prob.png", long_name])
    assert not any(path.exists() for path in ours)
    assert theirs.exists() and all(path.exists() for path in kept)
    remove_stale_temporaries(tmp_path / "missing", ["a_mask.png"])  # a folder not made yet has none


def _record_fsyncs(monkeypatch, watched):
    """Replace os.fsync with one that records, for each call, whether the fd is a folder, its (device, inode), and
    what `watched` (a file path) then holds (None when it does not exist), before calling the real fsync."""
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        status = os.fstat(fd)
        held = watched.read_bytes() if watched.exists() else None
        calls.append((stat.S_ISDIR(status.st_mode), (status.st_dev, status.st_ino), held))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def _identity(path):
    status = os.stat(path)
    return status.st_dev, status.st_ino


def test_an_atomic_write_fsyncs_the_file_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    """A power loss (not a kill) after the write returns must find the new contents under the name: the data is
    fsynced before the rename, and the folder, which holds the rename, after it."""
    path = tmp_path / "results.json"
    path.write_bytes(b"old")
    calls = _record_fsyncs(monkeypatch, path)
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    files = [held for is_dir, identity, held in calls if not is_dir and identity == _identity(path)]
    assert files == [b"old"], calls  # the renamed file's data was fsynced once, while the name still held the old
    folders = [held for is_dir, identity, held in calls if is_dir and identity == _identity(tmp_path)]
    assert folders == [b"new contents"], calls  # the folder was fsynced once the name held the new file


def test_appending_fsyncs_the_file_and_the_folder_that_gained_it(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    calls = _record_fsyncs(monkeypatch, path)
    append_lines(path, ['{"image": "a.png"}'])
    assert [held for is_dir, identity, held in calls if not is_dir and identity == _identity(path)] == [
        b'{"image": "a.png"}\n']
    assert [held for is_dir, identity, held in calls if is_dir and identity == _identity(tmp_path)] == [
        b'{"image": "a.png"}\n']  # a new file's name lives in its folder
    calls.clear()
    append_lines(path, ['{"image": "b.png"}', '{"image": "c.png"}'])
    assert path.read_bytes().splitlines()[1:] == [b'{"image": "b.png"}', b'{"image": "c.png"}']
    assert [held for is_dir, identity, held in calls if not is_dir and identity == _identity(path)] == [
        path.read_bytes()]


def test_a_filesystem_that_refuses_to_fsync_a_folder_still_gets_the_write(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_bytes(tmp_path / "a.png", b"png")
    append_lines(tmp_path / "results.jsonl", ["{}"])
    assert (tmp_path / "a.png").read_bytes() == b"png" and (tmp_path / "results.jsonl").read_bytes() == b"{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "results.jsonl"]  # no temporary left


def test_escapes_follows_links_of_what_exists_and_accepts_folders_not_yet_made(tmp_path):
    from diffiml_cli.files import escapes

    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    assert not escapes(out / "predictions" / "js", out / "predictions" / "js" / "b_prob.png")  # nothing made yet
    out.mkdir()
    assert not escapes(out, out / "new" / "deeper" / "a.png")
    (out / "thumbs").symlink_to(outside)
    assert escapes(out, out / "thumbs" / "a.png")  # a planted folder link
    (out / "results.jsonl").symlink_to(outside / "victim")
    assert escapes(out, out / "results.jsonl")  # a planted file link, even to nothing yet
    linked_root = tmp_path / "via"
    linked_root.symlink_to(out)
    assert not escapes(linked_root, linked_root / "a.png")  # --out given through a link is still itself
