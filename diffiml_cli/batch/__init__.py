"""Folders of images through a localizer: the outputs of each image, durable result records, and the run
that streams a folder of any size through `LocalizationPipeline` (also sharded over torchrun processes)."""

from diffiml_cli.batch.outputs import OUTPUT_KINDS, output_paths, overlay_heatmap
from diffiml_cli.batch.records import RESULTS_JSON, RESULTS_JSONL, ImageResult, read_records, rebuild_results_json
from diffiml_cli.batch.runner import LocalizeOptions, RunSummary, localize_files, prepare_out_dir

__all__ = [
    "OUTPUT_KINDS",
    "RESULTS_JSON",
    "RESULTS_JSONL",
    "ImageResult",
    "LocalizeOptions",
    "RunSummary",
    "localize_files",
    "output_paths",
    "overlay_heatmap",
    "prepare_out_dir",
    "read_records",
    "rebuild_results_json",
]
