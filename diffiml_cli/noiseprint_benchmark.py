"""What the Noiseprint front ends cost: parameters, FLOPs and measured ms per image, side by side in one run.

Each source (the teacher, Noiseprint++, and a LightNP student) is timed on the path `localize --noiseprint` runs:
`models.noiseprint.extract_map` on a random (S, S, 3) uint8 image, the uint8 -> float conversion and the copy out
included, one tile (S <= the tile side). FLOPs are counted by torch's counter on the network at S x S (a
multiply-add is 2 FLOPs; BatchNorm and ReLU are not counted, as for the localizer's rows).

Result (JSON-ready), one row per source:

    {"image_size": int, "rows": [{"name": str, "source": str, "parameters": int, "gflops": float,
                                  "flops_per_pixel": float, "ms_per_image": STATS, "vs_first": float}]}

`vs_first` is the first row's median ms over this row's (the speed-up over the teacher when it is listed first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from diffiml_cli.errors import DiffimlError
from diffiml_cli.flops import count_flops
from diffiml_cli.models.noiseprint import extract_map, load_noiseprint
from diffiml_cli.timing import summarize, time_call_ms


def benchmark_noiseprint(sources: Sequence[str], *, image_size: int = 512, device: torch.device | None = None,
                         warmup: int = 1, iters: int = 5, allow_pickle: bool = False,
                         on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rows for each noiseprint source (a checkpoint folder, a safetensors copy, or noiseprint++.th, read with
    torch.load(weights_only=True) when `allow_pickle`), timed on `image_size`-square images; see the module doc."""
    if iters < 1 or warmup < 0:
        raise DiffimlError(f"noiseprint benchmark: need iters >= 1 and warmup >= 0, got {iters} and {warmup}")
    device = device or torch.device("cpu")
    image = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    rows = []
    for source in sources:
        network, config = load_noiseprint(source, allow_pickle=allow_pickle)
        network = network.to(device)
        flops = count_flops(lambda: network(torch.rand(1, 3, image_size, image_size, device=device))).flops
        run = lambda: extract_map(network, config, image, tile=image_size, device=device)  # noqa: E731
        if on_progress:
            on_progress(f"timing {config.name} ({source}): {warmup} warmup + {iters} timed calls")
        for _ in range(warmup):
            run()
        ms = [time_call_ms(run, device) for _ in range(iters)]
        rows.append({"name": config.name, "source": str(source),
                     "parameters": sum(p.numel() for p in network.parameters()),
                     "gflops": flops / 1e9, "flops_per_pixel": flops / image_size ** 2, "ms_per_image": summarize(ms)})
    for row in rows:
        row["vs_first"] = rows[0]["ms_per_image"]["median"] / row["ms_per_image"]["median"]
    return {"image_size": image_size, "rows": rows}
