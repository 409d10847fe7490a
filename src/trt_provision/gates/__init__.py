"""Gates that run before any engine is deserialized: integrity/host match and memory."""
