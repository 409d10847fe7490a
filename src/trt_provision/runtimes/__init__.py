"""Runtime strategies. Each implements the ``InferenceRuntime`` Protocol (seams.py)."""
