"""The scripts behind the model card's held-out numbers: the held-out set and its per-kind scores."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
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


def test_real_train_split_keeps_an_original_and_its_edits_on_one_side(tmp_path):
    """docs/make_real_splits.py: no original and edit of it on both sides, the same draw every time, and the
    manifests read by `evaluate`'s reader (tampered with masks, originals as Negative)."""
    import json

    from diffiml_cli.data.readers import load_spec

    script = load_docs_script("make_real_splits")
    groups, split, write = script.groups, script.split, script.write

    root = tmp_path / "real-train"
    for folder in ("imd2020/tampered", "imd2020/mask", "imd2020/authentic", "imd2020/tampered-unmasked",
                   "comofod/forged", "comofod/mask", "comofod/authentic"):
        (root / folder).mkdir(parents=True)
    image = np.zeros((8, 8, 3), np.uint8)
    for index in range(10):
        ident = f"{index:05d}"
        for name in (f"imd2020/tampered/{ident}_fake.png", f"imd2020/mask/{ident}_fake.png",
                     f"imd2020/authentic/{ident}_orig.png", f"comofod/forged/{index:03d}.png",
                     f"comofod/mask/{index:03d}.png", f"comofod/authentic/{index:03d}.png",
                     f"imd2020/tampered-unmasked/u{index}_0.png"):
            cv2.imwrite(str(root / name), image)
    found = groups(root)
    parts = split(found)
    assert parts == split(groups(root)) and not set(parts["train"]) & set(parts["val"])
    assert len(parts["val"]) == 9 and len(parts["train"]) == 21  # 30 % of each source's 10 groups
    assert all(len(found[key]) == 2 for key in parts["val"] if key.startswith(("imd2020:", "comofod:")))
    write(found, parts, tmp_path / "splits")
    train = json.loads((tmp_path / "splits" / "real-train-train.json").read_text())
    val_names = {Path(entry[0]).name for entry in json.loads((tmp_path / "splits" / "real-train-val.json").read_text())}
    assert not {Path(entry[0]).name.split("_")[0] for entry in train} & {name.split("_")[0] for name in val_names}
    pairs = load_spec(tmp_path / "splits" / "real-train-val.json")
    assert sum(pair.mask is None for pair in pairs) == sum(pair.mask is not None for pair in pairs) == 6
