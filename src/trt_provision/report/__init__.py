"""``trt-provision report``: what the cache (and the remote store) holds for a manifest, as
one self-contained HTML page, JSON or markdown. Read-only."""
