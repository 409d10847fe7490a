"""Engine stores: the local cache directory and the remote S3-compatible store."""
