"""TensorStore kvstore specs for a store location: a local folder, ``s3://`` or ``gs://``.

Endpoints and credentials come from the standard environment, as boto3 and gcsfs read
them. TensorStore's ``s3`` driver ignores ``AWS_ENDPOINT_URL``, so it is put into the
spec here; for GCS, TensorStore reads ``TENSORSTORE_GCS_HTTP_URL`` itself. Retries and
connection timeouts are bounded (TensorStore's defaults: 32 retries, a 30 s connect
timeout) so that a missing bucket, refused credentials or an unreachable endpoint fail
within seconds, naming the URL, instead of stalling; the environment may override them.
"""

from __future__ import annotations

import os
from typing import Any

from hpajax import files

# TensorStore's retry bound and backoff (its defaults: 32 retries, 1 s up to 32 s).
_RETRIES = {"max_retries": 4, "initial_delay": "100ms", "max_delay": "2s"}
# TensorStore's HTTP settings, read from the environment when it first connects.
_CURL_DEFAULTS = {"TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS": "5",  # per attempt
                  "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": "30",  # a silent server
                  "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES": "1"}


def spec(location: str | os.PathLike) -> dict[str, Any]:
    """The kvstore spec of the folder (or key prefix) at ``location``."""
    text = os.fspath(location)
    kind = files.scheme(text)
    if not kind:
        return {"driver": "file", "path": text}
    for name, value in _CURL_DEFAULTS.items():
        os.environ.setdefault(name, value)
    bucket, _, prefix = text[len(kind) + 3:].partition("/")
    path = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    if kind == "s3":
        return _s3(bucket, path)
    if kind == "gs":
        return {"driver": "gcs", "bucket": bucket, "path": path,
                "context": {"gcs_request_retries": _RETRIES}}
    raise ValueError(f"{text}: {kind}:// is not a TensorStore kvstore hpajax supports")


def _s3(bucket: str, path: str) -> dict[str, Any]:
    out = {"driver": "s3", "bucket": bucket, "path": path,
           "context": {"s3_request_retries": _RETRIES}}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        out["endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        out["aws_region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID"):  # else the default chain: profile, instance role
        out["aws_credentials"] = {"type": "environment"}
    return out
