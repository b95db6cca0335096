"""Temporaries of killed writers: found by name, in one listing, whatever the name's length."""

from __future__ import annotations

from diffiml_cli.files import NAME_MAX, remove_stale_temporaries, temporary_beside


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
