"""The networks of a DiffIML localizer, one concept per file; `build.py` turns configs into modules."""
