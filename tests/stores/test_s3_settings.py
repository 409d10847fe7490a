"""S3Settings: environment, validation and secret hygiene (no server needed)."""

from __future__ import annotations

import sys

import pytest

from trt_provision.errors import ManifestError
from trt_provision.stores.s3 import S3EngineStore, S3Settings, settings_from_config
from trt_provision.types import EngineIdentity, PrecisionMode

pytestmark = pytest.mark.tier0

SECRET = "very-secret-value-42"


def test_from_env_prefers_artifacts_variables() -> None:
    env = {
        "ARTIFACTS_ENDPOINT": "http://127.0.0.1:9000",
        "ARTIFACTS_ACCESS_KEY": "ak",
        "ARTIFACTS_SECRET_KEY": SECRET,
        "ARTIFACTS_BUCKET": "fleet-engines",
        "AWS_ACCESS_KEY_ID": "aws-ak",
        "AWS_SECRET_ACCESS_KEY": "aws-sk",
        "AWS_REGION": "eu-west-1",
    }
    s = S3Settings.from_env(env)
    assert (s.endpoint, s.bucket, s.region) == ("http://127.0.0.1:9000", "fleet-engines", "eu-west-1")
    assert (s.access_key, s.secret_key, s.session_token) == ("ak", SECRET, None)


def test_from_env_falls_back_to_aws_variables_and_overrides_win() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "aws-ak",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": "tok",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
    }
    s = S3Settings.from_env(env, bucket="b-from-config", prefix="/site-a/", region=None)
    assert (s.access_key, s.session_token, s.bucket, s.prefix) == (
        "aws-ak", "tok", "b-from-config", "site-a"
    )
    assert s.region == "us-east-1"


def test_no_bucket_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="bucket"):
        S3Settings.from_env({})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint": "ftp://x"},
        {"endpoint": f"http://ak:{SECRET}@127.0.0.1:9000"},
        {"access_key": "ak"},
        {"read_timeout_s": 0},
        {"max_attempts": 0},
    ],
)
def test_invalid_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ManifestError) as info:
        S3Settings(bucket="b", **kwargs)  # type: ignore[arg-type]
    assert SECRET not in str(info.value)


def test_secrets_never_in_repr_or_description() -> None:
    s = S3Settings(bucket="b", access_key="ak", secret_key=SECRET, session_token="tok-secret")
    store = S3EngineStore(s, client=object())
    for text in (repr(s), str(s), repr(store), repr(s.describe())):
        assert SECRET not in text and "tok-secret" not in text


def test_key_layout() -> None:
    identity = EngineIdentity(
        model_name="yolo_n",
        model_sha256="ab" * 32,
        precision=PrecisionMode.INT8,
        runtime="trt",
        runtime_version="10.3.0",
        target="sm87",
        platform="jp6.2",
        options_digest="0123456789ab",
    )
    with_prefix = S3EngineStore(S3Settings(bucket="b", prefix="fleet/a"), client=object())
    bare = S3EngineStore(S3Settings(bucket="b"), client=object())
    assert with_prefix.key_for(identity) == f"fleet/a/engines/yolo_n/{identity.filename}"
    assert bare.key_for(identity) == f"engines/yolo_n/{identity.filename}"


def test_importing_the_store_does_not_import_boto3() -> None:
    # The module is already imported by this test file; boto3 may be loaded by other
    # tests, so check in a fresh interpreter.
    import subprocess

    code = (
        "import sys, trt_provision.stores.s3, trt_provision.trust; "
        "sys.exit(1 if {'boto3', 'botocore', 'cryptography'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_engine_mib", float("inf")),
        ("max_engine_mib", float("nan")),
        ("max_engine_mib", 1e300),
        ("max_attempts", float("nan")),
        ("max_attempts", 2.5),
        ("max_attempts", True),
        ("connect_timeout_s", float("nan")),
        ("read_timeout_s", float("inf")),
        ("get_deadline_s", 0),
        ("get_deadline_s", float("inf")),
        ("get_deadline_s", "60"),
        ("min_rate_kib_s", -1),
        ("min_rate_kib_s", float("nan")),
        ("min_rate_kib_s", True),
    ],
)
def test_config_numbers_must_be_finite(key: str, value: object) -> None:
    with pytest.raises(ManifestError) as info:
        settings_from_config({"bucket": "b", key: value}, environ={})
    assert info.value.context["key"] == f"remote.{key}"


def test_config_numbers_convert() -> None:
    s = settings_from_config({"bucket": "b", "max_engine_mib": 2, "max_attempts": 5}, environ={})
    assert s is not None and s.max_engine_bytes == 2 << 20 and s.max_attempts == 5


def test_transfer_limits_convert() -> None:
    s = settings_from_config(
        {"bucket": "b", "get_deadline_s": 90, "min_rate_kib_s": 16}, environ={}
    )
    assert s is not None and (s.get_deadline_s, s.min_rate_bytes_s) == (90, 16 << 10)
    off = settings_from_config({"bucket": "b", "min_rate_kib_s": 0}, environ={})
    assert off is not None and off.min_rate_bytes_s == 0


def test_max_attempts_means_total_attempts_in_the_botocore_config() -> None:
    """botocore's ``max_attempts`` counts retries only; ours is handed over as a total."""
    pytest.importorskip("boto3")
    store = S3EngineStore(S3Settings(bucket="b", endpoint="http://127.0.0.1:9", max_attempts=2))
    retries = store.client().meta.config.retries
    assert retries["total_max_attempts"] == 2 and "max_attempts" not in retries


def test_store_constructor_bounds() -> None:
    settings = S3Settings(bucket="b")
    with pytest.raises(ValueError, match="part_bytes"):
        S3EngineStore(settings, part_bytes=1 << 20)
    with pytest.raises(ValueError, match="multipart_threshold"):
        S3EngineStore(settings, multipart_threshold_bytes=6 << 30)
