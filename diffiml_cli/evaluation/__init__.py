"""Scoring localizers on labelled data: per-image metrics (`accumulator`), datasets clean and perturbed
(`scoring`, `robustness`), sampling sweeps (`sweep`), the written report (`report`, `definitions`), and the
detector's calibration (`calibration`)."""

from diffiml_cli.evaluation.report import write_report
from diffiml_cli.evaluation.scoring import (METRIC_KEYS, DatasetReport, EvaluateOptions, EvaluationReport,
                                            evaluate_dataset, evaluate_datasets, parse_dataset_arg)

__all__ = ["METRIC_KEYS", "DatasetReport", "EvaluateOptions", "EvaluationReport", "evaluate_dataset",
           "evaluate_datasets", "parse_dataset_arg", "write_report"]
