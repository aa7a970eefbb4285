"""Object-store settings shared by input reads and Lance writes.

Credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) when the job starts; they are
never written to a table, a log, or a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ObjectStore"]


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
