"""Settings of the S3 store: one URL plus the standard AWS environment.

``s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true``

Where the store is goes in the URL (safe to log, to print, to put in a resource); who may
use it comes only from the environment, so a URL never carries a secret. Options missing
from the URL fall back to ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and ``AWS_REGION``
/ ``AWS_DEFAULT_REGION``, the same variables the AWS tools read. The CLI, the SDK and the
Kubernetes backends all build the store from these two inputs.

Credentials, first found wins (:meth:`S3Settings.credential_source`):

1. static keys: ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``
   with temporary keys);
2. web identity: ``AWS_WEB_IDENTITY_TOKEN_FILE`` and ``AWS_ROLE_ARN``, as Kubernetes
   service-account roles (EKS IRSA) set them; the token is exchanged with STS;
3. container credentials: ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` or
   ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``, as EKS Pod Identity and ECS set them;
4. the cloud's instance metadata service, only when the URL says ``instance_metadata=true``.

With none of them (and no ``anonymous=true``), opening the store raises
:class:`errors.CredentialsNotFound` before any request is made: a machine that merely lacks
keys never asks the link-local metadata address for some instance's role.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlencode, urlparse

from kvol import errors
from kvol.store.base import check_prefix

DEFAULT_REGION = "us-east-1"

# S3's own rules are stricter (lowercase, 3-63); older Ceph and AWS buckets break them,
# so only refuse what could never be a bucket name.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise errors.InvalidArgument(f"S3 option {name} must be true or false, not {value!r}")


def _positive(name: str, value: str, kind: type[int] | type[float]) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise errors.InvalidArgument(f"S3 option {name} must be a number, not {value!r}") from None
    if number < 0:
        raise errors.InvalidArgument(f"S3 option {name} must not be negative: {value!r}")
    return number


def _check_endpoint(endpoint: str) -> str:
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise errors.InvalidArgument(
            f"S3 endpoint must be an http:// or https:// URL with a host, not {endpoint!r}"
        )
    if parsed.username or parsed.password:
        raise errors.InvalidArgument(
            "S3 endpoint must not carry credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the environment instead"
        )
    if parsed.query or parsed.fragment:
        raise errors.InvalidArgument(f"S3 endpoint must not have a query: {endpoint!r}")
    return endpoint.rstrip("/")


@dataclass(frozen=True)
class S3Settings:
    """Everything needed to reach one bucket (and prefix) of an S3-compatible server."""

    bucket: str
    #: Key prefix inside the bucket: empty or ending with ``/``.
    prefix: str = ""
    #: ``http(s)://host:port`` of a non-AWS server (MinIO, Ceph RGW); None for AWS.
    endpoint: str | None = None
    region: str = DEFAULT_REGION
    #: ``https://host/bucket/key`` rather than ``https://bucket.host/key``. Servers other
    #: than AWS rarely have the wildcard DNS that virtual-hosted requests need.
    path_style: bool = True
    #: Send unsigned requests (public buckets); no credentials are looked up.
    anonymous: bool = False
    #: Allow credentials from the instance metadata service when the environment has none.
    instance_metadata: bool = False
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    #: A service account's role: the projected token file and the role to assume with it.
    web_identity_token_file: str | None = None
    role_arn: str | None = None
    #: Retries of one request for transient failures (5xx, dropped connections,
    #: throttling), with exponential backoff and jitter, within ``retry_timeout`` seconds.
    max_retries: int = 8
    retry_timeout: float = 60.0
    connect_timeout: float = 5.0
    #: Whole-request limit; a slow request past it counts as a transient failure.
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if not _BUCKET.match(self.bucket):
            raise errors.InvalidArgument(f"invalid S3 bucket name {self.bucket!r}")
        check_prefix(self.prefix)
        if self.endpoint is not None:
            _check_endpoint(self.endpoint)
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise errors.InvalidArgument(
                "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither"
            )
        if (self.web_identity_token_file is None) != (self.role_arn is None):
            raise errors.InvalidArgument(
                "set both AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or neither"
            )
        if self.anonymous and self.instance_metadata:
            raise errors.InvalidArgument(
                "S3 options anonymous and instance_metadata exclude each other"
            )

    def credential_source(self, environ: Mapping[str, str]) -> str:
        """Where requests get their credentials: ``anonymous``, ``keys``, ``web-identity``,
        ``container`` or ``instance-metadata`` (see the module's docstring).

        ``environ`` is the process environment the S3 client also reads: settings built
        without :meth:`from_url` (the operator's, for a backend without a Secret) take the
        pod's ambient credentials from it. Raises :class:`errors.CredentialsNotFound`.
        """
        if self.anonymous:
            return "anonymous"
        if self.access_key_id or (
            environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY")
        ):
            return "keys"
        if self.web_identity_token_file or (
            environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") and environ.get("AWS_ROLE_ARN")
        ):
            return "web-identity"
        if environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or environ.get(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
        ):
            return "container"
        if self.instance_metadata:
            return "instance-metadata"
        raise errors.CredentialsNotFound(
            f"no S3 credentials found for {self.location}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN (a "
            "service account's role); add instance_metadata=true to the store URL to use "
            "the machine's instance role, or anonymous=true for a public bucket"
        )

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Parse ``s3://bucket/prefix?options``; credentials and defaults from ``environ``."""
        import os

        env = os.environ if environ is None else environ
        parsed = urlparse(url)
        if parsed.scheme != "s3":
            raise errors.InvalidArgument(f"not an S3 store URL: {url!r}")
        if parsed.username or parsed.password:
            raise errors.InvalidArgument(
                "an S3 store URL must not carry credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment instead"
            )
        bucket = parsed.hostname or ""
        if not bucket or parsed.port is not None:
            raise errors.InvalidArgument(
                f"S3 store URL needs a bucket: s3://BUCKET[/PREFIX][?endpoint=...], not {url!r}"
            )
        # The netloc keeps the bucket's case; hostname lowercases it.
        bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        prefix = prefix + "/" if prefix else ""

        options = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise errors.InvalidArgument(
                f"unknown S3 store option(s) {sorted(unknown)}; known: {', '.join(_OPTIONS)}"
            )

        endpoint = (
            options.get("endpoint")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None
        )
        region = (
            options.get("region")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        # Path style unless told otherwise, except on AWS itself (no endpoint), which
        # prefers virtual-hosted requests.
        path_style = (
            _flag("path_style", options["path_style"])
            if "path_style" in options
            else endpoint is not None
        )
        anonymous = _flag("anonymous", options["anonymous"]) if "anonymous" in options else False
        key_id = env.get("AWS_ACCESS_KEY_ID") or None
        secret = env.get("AWS_SECRET_ACCESS_KEY") or None
        token = env.get("AWS_SESSION_TOKEN") or None
        token_file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or None
        role_arn = env.get("AWS_ROLE_ARN") or None
        # Both or neither: a role ARN alone (other AWS tools read it so) is no web identity.
        if token_file is None or role_arn is None:
            token_file = role_arn = None
        instance_metadata = (
            _flag("instance_metadata", options["instance_metadata"])
            if "instance_metadata" in options
            else False
        )
        tuning: dict[str, float] = {}
        if "retries" in options:
            tuning["max_retries"] = int(_positive("retries", options["retries"], int))
        for name in ("retry_timeout", "connect_timeout", "timeout"):
            if name in options:
                tuning[name] = _positive(name, options[name], float)
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint=_check_endpoint(endpoint) if endpoint else None,
            region=region,
            path_style=path_style,
            anonymous=anonymous,
            access_key_id=None if anonymous else key_id,
            secret_access_key=None if anonymous else secret,
            session_token=None if anonymous else token,
            web_identity_token_file=None if anonymous else token_file,
            role_arn=None if anonymous else role_arn,
            instance_metadata=instance_metadata,
            **tuning,  # type: ignore[arg-type]
        )

    @property
    def url(self) -> str:
        """The canonical URL: every option that differs from its default, never a secret."""
        options: dict[str, str] = {}
        if self.endpoint:
            options["endpoint"] = self.endpoint
        options["region"] = self.region
        if self.path_style != (self.endpoint is not None):
            options["path_style"] = str(self.path_style).lower()
        if self.anonymous:
            options["anonymous"] = "true"
        if self.instance_metadata:
            options["instance_metadata"] = "true"
        defaults = S3Settings(bucket="b")
        if self.max_retries != defaults.max_retries:
            options["retries"] = str(self.max_retries)
        for name in ("retry_timeout", "connect_timeout", "timeout"):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                options[name] = f"{value:g}"
        query = urlencode(options, safe=":/")
        return f"s3://{self.bucket}/{quote(self.prefix)}" + (f"?{query}" if query else "")

    @property
    def location(self) -> str:
        """``bucket`` at ``endpoint``, for error messages."""
        where = self.endpoint or f"AWS S3 ({self.region})"
        return f"bucket {self.bucket!r} at {where}"


_OPTIONS = (
    "endpoint",
    "region",
    "path_style",
    "anonymous",
    "instance_metadata",
    "retries",
    "retry_timeout",
    "connect_timeout",
    "timeout",
)
