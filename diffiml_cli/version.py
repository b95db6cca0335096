"""The package version, in one place (read by hatchling for the wheel, and by run records)."""

__version__ = "0.2.0"
