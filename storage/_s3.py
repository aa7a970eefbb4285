"""Object-store settings shared by input reads and Lance writes.

Credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) when the job starts; they are
never written to a table, a log, or a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._messages import error_line

__all__ = ["ObjectStore", "StoreError", "check_store", "s3_client", "split_s3_uri"]


@dataclass(frozen=True, kw_only=True)
class ObjectStore:
    endpoint: str | None = None
    region: str | None = None
    allow_http: bool | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        allow_http: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ObjectStore:
        env = os.environ if environ is None else environ
        return cls(
            endpoint=endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            region=region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            allow_http=allow_http,
            access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            session_token=env.get("AWS_SESSION_TOKEN"),
        )

    @property
    def has_credentials(self) -> bool:
        return bool(self.access_key_id and self.secret_access_key)

    def lance_options(self) -> dict[str, str]:
        """Storage options for Lance / LanceDB."""
        opts: dict[str, str] = {}
        if self.access_key_id:
            opts["aws_access_key_id"] = self.access_key_id
        if self.secret_access_key:
            opts["aws_secret_access_key"] = self.secret_access_key
        if self.session_token:
            opts["aws_session_token"] = self.session_token
        if self.endpoint:
            opts["aws_endpoint"] = self.endpoint
        opts["aws_region"] = self.region or "us-east-1"
        allow_http = (
            self.allow_http
            if self.allow_http is not None
            else bool(self.endpoint and self.endpoint.startswith("http://"))
        )
        if allow_http:
            opts["allow_http"] = "true"
        return opts

    def filesystem(self):
        """An s3fs filesystem for reading inputs (Ray Data, pyarrow)."""
        import s3fs

        client_kwargs = {"endpoint_url": self.endpoint} if self.endpoint else {}
        # region_name in client_kwargs breaks mkdir on some S3-compatible servers; pass it as config
        config_kwargs = {"region_name": self.region} if self.region and not self.endpoint else {}
        return s3fs.S3FileSystem(
            key=self.access_key_id,
            secret=self.secret_access_key,
            token=self.session_token,
            client_kwargs=client_kwargs,
            config_kwargs=config_kwargs,
        )


def s3_client(
    storage_options: Mapping[str, str] | None,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    max_attempts: int = 2,
):
    """A botocore S3 client from the storage options Lance gets (``aws_*`` keys), with short timeouts: the
    callers (the table lock, the store probe) retry on their own terms rather than botocore's minutes."""
    import botocore.session
    from botocore.config import Config

    opts = dict(storage_options or {})
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=opts.get("aws_endpoint") or None,
        region_name=opts.get("aws_region") or "us-east-1",
        aws_access_key_id=opts.get("aws_access_key_id"),
        aws_secret_access_key=opts.get("aws_secret_access_key"),
        aws_session_token=opts.get("aws_session_token"),
        config=Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        ),
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class StoreError(ValueError):
    """An object store that cannot be used as configured (unreachable, bad credentials, missing bucket);
    the message is one line naming the value and what to check."""


def check_store(uri: str, storage_options: Mapping[str, str] | None, *, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line, when ``uri``'s bucket cannot be used: the endpoint is unreachable or silent, the
    credentials are unknown or wrong, access is denied, or the bucket does not exist (a prefix that does not
    exist yet is fine). One small listing request, with short timeouts (the libraries' own retries can take
    minutes on a silent endpoint)."""
    import botocore.exceptions as bx

    opts = dict(storage_options or {})
    bucket, key = split_s3_uri(uri)
    endpoint = opts.get("aws_endpoint") or "AWS S3"
    client = s3_client(opts, connect_timeout=min(5.0, timeout_s), read_timeout=timeout_s, max_attempts=1)
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/"), MaxKeys=1)
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as exc:
        raise StoreError(
            f"cannot reach the S3 endpoint {endpoint} ({error_line(exc, 200)}); check [storage] endpoint "
            f"(or AWS_ENDPOINT_URL) and that the store is up"
        ) from None
    except bx.ReadTimeoutError:
        raise StoreError(
            f"the S3 endpoint {endpoint} accepted the connection but did not answer within {timeout_s:g} s; "
            f"check [storage] endpoint and the store's health"
        ) from None
    except bx.NoCredentialsError:
        raise StoreError(
            f"no credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
        ) from None
    except bx.ClientError as exc:
        code = (exc.response.get("Error") or {}).get("Code", "")
        key_id = opts.get("aws_access_key_id") or ""
        shown = f"{key_id[:4]}…" if key_id else "(none)"
        if code == "NoSuchBucket":
            raise StoreError(
                f"bucket {bucket!r} does not exist at {endpoint}; create it, or fix the uri {uri!r}"
            ) from None
        if code == "InvalidAccessKeyId":
            raise StoreError(
                f"{endpoint} does not know the access key {shown} (AWS_ACCESS_KEY_ID); check the credentials "
                f"in the environment"
            ) from None
        if code == "SignatureDoesNotMatch":
            raise StoreError(
                f"{endpoint} refused the secret key for access key {shown} (AWS_SECRET_ACCESS_KEY does not match)"
            ) from None
        if code in ("AccessDenied", "AllAccessDisabled", "403"):
            raise StoreError(
                f"access to s3://{bucket}/{key} is denied for access key {shown}; the job needs to list, read, "
                f"write and delete objects there"
            ) from None
        raise StoreError(
            f"{uri}: the S3 store at {endpoint} answered {code or 'an error'}: {error_line(exc, 200)}"
        ) from None
