"""Exports of cached engines into other tools' layouts (a Triton model repository)."""
