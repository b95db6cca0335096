"""Named evaluation datasets from `NAME=SPEC` arguments (IMDL-BenCo JSON files or Tp/Gt[/Au] folders)."""

from __future__ import annotations

from collections.abc import Sequence

from diffiml_cli.data.readers import Pair, load_spec
from diffiml_cli.errors import DiffimlError
from diffiml_cli.evaluation.scoring import parse_dataset_arg


def load_datasets(specs: Sequence[str], limit: int | None = None) -> dict[str, tuple[str, list[Pair]]]:
    """{name: (spec, pairs)} in the given order, each cut to its first `limit` pairs when given. Two datasets
    of one name, or one named "average" (the mean row's), are a DiffimlError."""
    datasets: dict[str, tuple[str, list[Pair]]] = {}
    for text in specs:
        name, spec = parse_dataset_arg(text)
        if name in datasets:
            raise DiffimlError(f"datasets: two are named {name!r}; name them with NAME=SPEC")
        if name == "average":
            raise DiffimlError("datasets: 'average' is reserved for the mean row; pick another NAME=")
        pairs = load_spec(spec)
        datasets[name] = (spec, pairs[:limit] if limit else pairs)
    return datasets
