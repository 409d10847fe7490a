"""Putting an engine: one conditional PUT, or above the single-PUT limit (5 GiB on S3) a
multipart upload whose completion is conditional too. A failed multipart upload is
aborted, so no parts stay behind."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.stores.s3.faults import Conflict
from trt_provision.stores.s3.transfer import Transfer

MAX_SINGLE_PUT_BYTES = 5 << 30  # S3's limit for one PUT: larger engines go up in parts
MIN_PART_BYTES = 5 << 20  # S3's smallest part (but the last)
MAX_PARTS = 10_000
DEFAULT_PART_BYTES = 64 << 20


@dataclass(frozen=True)
class PartPlan:
    """When an engine goes up in parts, and how large they are (at least)."""

    threshold_bytes: int = MAX_SINGLE_PUT_BYTES
    part_bytes: int = DEFAULT_PART_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.threshold_bytes <= MAX_SINGLE_PUT_BYTES:
            raise ValueError(
                f"multipart_threshold_bytes must be in 1..{MAX_SINGLE_PUT_BYTES}, "
                f"got {self.threshold_bytes}"
            )
        if not MIN_PART_BYTES <= self.part_bytes <= MAX_SINGLE_PUT_BYTES:
            raise ValueError(f"part_bytes must be in 5 MiB..5 GiB, got {self.part_bytes}")


def put_engine(
    transfer: Transfer, plan: PartPlan, key: str, path: Path, size: int,
    condition: Mapping[str, str],
) -> None:
    """One PUT, or a multipart upload above the threshold; both conditional."""
    if size <= plan.threshold_bytes:
        with open(path, "rb") as fh:
            transfer.conditional(
                lambda: transfer.request(
                    "put_object", Key=key, Body=fh, ContentLength=size, **condition
                )
            )
        return
    part_bytes = max(plan.part_bytes, -(-size // MAX_PARTS))
    upload_id = transfer.request("create_multipart_upload", Key=key)["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        with open(path, "rb") as fh:
            while data := fh.read(part_bytes):
                number = len(parts) + 1
                response = transfer.request(
                    "upload_part",
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ContentLength=len(data),
                )
                parts.append({"ETag": response["ETag"], "PartNumber": number})
        # Check, then complete conditionally. The completion carries the same condition
        # as a single PUT (AWS S3 and SeaweedFS honour it); the check before it keeps a
        # server that ignores conditions on completion from overwriting a slot filled
        # during the part uploads, leaving only the moment between check and completion.
        if condition.get("IfNoneMatch") == "*" and transfer.head(key) is not None:
            raise Conflict("slot filled during the multipart upload")
        transfer.conditional(
            lambda: transfer.request(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        )
    except BaseException:
        with contextlib.suppress(Exception):
            transfer.request("abort_multipart_upload", Key=key, UploadId=upload_id)
        raise
