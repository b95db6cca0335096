"""The HTML case report of a `localize` output folder: per image its thumbnails, scores, verdict and file
metadata (size, SHA-256, EXIF, JPEG quality), and the run's settings, in one self-contained page."""

from diffiml_cli.report.build import REPORT_HTML, build_report
from diffiml_cli.report.metadata import FileMetadata, estimate_jpeg_quality, read_metadata

__all__ = ["REPORT_HTML", "FileMetadata", "build_report", "estimate_jpeg_quality", "read_metadata"]
