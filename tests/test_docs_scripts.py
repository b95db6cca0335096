"""The scripts behind the model card's held-out numbers: the held-out set and its per-kind scores."""

from __future__ import annotations

import csv

import pytest

from docs_scripts import load_docs_script


def test_heldout_kinds_name_every_pair_and_score_by_kind_averages_them(tmp_path, photo_folder, capsys):
    heldout = tmp_path / "heldout"
    load_docs_script("make_heldout").main(str(photo_folder), str(heldout))
    with open(heldout / "kinds.csv", newline="") as handle:
        kind_of = {row["image"]: row["kind"] for row in csv.DictReader(handle)}
    tampered = {path.name for path in (heldout / "Tp").iterdir()}
    authentic = {path.name for path in (heldout / "Au").iterdir()}
    assert len(kind_of) == 60 and set(kind_of) == tampered | authentic
    assert {kind_of[name] for name in authentic} <= {"authentic"}
    assert {kind_of[name] for name in tampered} <= {"splice", "copy_move", "inpaint"}

    # A per_image.csv as `diffiml evaluate` writes it: F1 1.0 for splices, 0.0 for everything else.
    per_image = tmp_path / "per_image.csv"
    with open(per_image, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "image", "tampered", "pixel_f1"])
        for name in sorted(tampered):
            writer.writerow(["synthetic", str(heldout / "Tp" / name), "True", float(kind_of[name] == "splice")])
            writer.writerow(["other", str(heldout / "Tp" / name), "True", 0.5])  # another dataset: ignored
        for name in sorted(authentic):
            writer.writerow(["synthetic", str(heldout / "Au" / name), "False", 0.0])
    capsys.readouterr()  # drop make_heldout's own message
    load_docs_script("score_by_kind").main(str(heldout), str(per_image))
    output = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in output.splitlines()}
    counts = {kind: sum(kind_of[name] == kind for name in tampered) for kind in lines}
    assert lines["splice"][-1] == "1.000", output
    assert all(lines[kind][-1] == "0.000" for kind in lines if kind != "splice")
    assert all(int(lines[kind][1]) == counts[kind] for kind in lines) and sum(counts.values()) == len(tampered)
    with pytest.raises(SystemExit, match="no tampered images"):
        load_docs_script("score_by_kind").main(str(heldout), str(per_image), "absent")
