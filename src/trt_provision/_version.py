"""Tool version, kept in one place (it enters metadata and calibration keys)."""

__version__ = "0.1.0"
