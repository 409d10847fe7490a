"""The fleet's shared engine store on an S3-compatible server (AWS S3, MinIO, SeaweedFS...).

Everything read from the bucket is hostile until checked: every request runs under an
overall deadline and every GET under a minimum transfer rate, every body is read up to a
fixed bound (the engine up to the size its metadata declares, plus one byte; any other
answer up to 64 KiB), the signature is checked over the raw metadata bytes before they are
parsed, and JSON is parsed with bounded depth. Every remote fault is logged with its reason
and reported as "no engine" / "not uploaded"; after the first connection-level fault the
remote is skipped for the rest of the run. Nothing partial is ever published locally (temp
file → verify → rename) or left remotely (an upload that fails halfway deletes what it put).

One module per concern; only this package imports boto3 and botocore, lazily:

- ``settings``   ``S3Settings`` from the manifest and the environment; URL redaction
- ``layout``     object keys and names (``<prefix>/engines/<model>/<file>`` + sidecars), bounds
- ``client``     the boto3 client, and the bound on every answer body botocore reads whole
- ``transfer``   every request under a deadline; GETs under a minimum rate, read to a bound
- ``faults``     what went wrong, in one line, and whether to give the remote up
- ``signatures`` the trust checks: a signature before any parse, no unsigned upload
- ``fetch``      one object set: download, verify, publish locally, gate
- ``multipart``  putting an engine: one conditional PUT, or a conditional multipart upload
- ``upload``     one object set: conditional puts in order, replacing unsigned sets, rollback
- ``timing``     a builder of record's TensorRT timing cache: pushed signed, fetched verified
- ``store``      ``S3EngineStore``, the remote store of one run, which never raises

Only the names below are the package's API; the modules' other names are its own.
"""

from __future__ import annotations

from trt_provision.stores.s3.settings import (
    S3Settings,
    redact_url,
    redact_urls,
    settings_from_config,
)
from trt_provision.stores.s3.signatures import UNAUTHENTICATED_WARNING, SignatureVerifier
from trt_provision.stores.s3.store import S3EngineStore, remote_store_from_settings

__all__ = [
    "UNAUTHENTICATED_WARNING",
    "S3EngineStore",
    "S3Settings",
    "SignatureVerifier",
    "redact_url",
    "redact_urls",
    "remote_store_from_settings",
    "settings_from_config",
]
