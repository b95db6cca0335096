"""Scoring localizers on labelled data: per-image metrics (`accumulator`), datasets clean and perturbed
(`scoring`, `robustness`), sampling sweeps (`sweep`), the written report (`report`, `definitions`), and the
detector's calibration (`calibration`).

Nothing is imported here, so that `definitions` (the text of `diffiml evaluate --help`) loads without torch;
the names below are imported on first use.
"""

__all__ = ["METRIC_KEYS", "DatasetReport", "EvaluateOptions", "EvaluationReport", "evaluate_dataset",
           "evaluate_datasets", "parse_dataset_arg", "write_report"]


def __getattr__(name: str):
    if name == "write_report":
        from diffiml_cli.evaluation.report import write_report

        return write_report
    if name in __all__:
        from diffiml_cli.evaluation import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'diffiml_cli.evaluation' has no attribute {name!r}")
