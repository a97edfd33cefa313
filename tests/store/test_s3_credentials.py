"""Where the S3 store gets credentials, and that lacking them never reaches the network.

No test here sends a request in this process: the one that runs the CLI without
credentials does so in a network namespace of its own with no interface up and no route,
so even a regression that asked the instance metadata address could not send anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvol import errors
from kvol.store import open_store
from kvol.store.s3 import S3Settings, S3Store

KEYS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "very-secret-value"}
WEB_IDENTITY = {
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
    "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/kvol",
}


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 client reads the process environment too: start each test from none."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)


def _without_aws(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("AWS_")}


def test_no_credentials_anywhere_is_refused_before_any_request() -> None:
    settings = S3Settings.from_url("s3://bucket/p", {})
    with pytest.raises(errors.CredentialsNotFound) as caught:
        S3Store(settings)
    message = str(caught.value)
    assert message.startswith("no S3 credentials found for bucket 'bucket'")
    assert "AWS_ACCESS_KEY_ID" in message and "instance_metadata=true" in message
    assert "\n" not in message
    assert caught.value.exit_code == 9 and not caught.value.retryable
    # The same through open_store, as the CLI and the SDK open it.
    with pytest.raises(errors.CredentialsNotFound):
        open_store("s3://bucket/p?endpoint=http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("url", "env", "source"),
    [
        ("s3://b", KEYS, "keys"),
        ("s3://b", KEYS | WEB_IDENTITY, "keys"),
        ("s3://b", WEB_IDENTITY, "web-identity"),
        ("s3://b", {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/c"}, "container"),
        ("s3://b?instance_metadata=true", {}, "instance-metadata"),
        ("s3://b?instance_metadata=true", WEB_IDENTITY, "web-identity"),
        ("s3://b?anonymous=true", KEYS, "anonymous"),
    ],
)
def test_credential_sources_in_order(url: str, env: dict[str, str], source: str) -> None:
    settings = S3Settings.from_url(url, env)
    assert settings.credential_source(env) == source


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"AWS_ROLE_ARN": WEB_IDENTITY["AWS_ROLE_ARN"]},
        {"AWS_WEB_IDENTITY_TOKEN_FILE": WEB_IDENTITY["AWS_WEB_IDENTITY_TOKEN_FILE"]},
        {"AWS_PROFILE": "default", "AWS_REGION": "eu-west-1"},
    ],
    ids=["nothing", "role-without-token", "token-without-role", "profile-only"],
)
def test_incomplete_sources_are_not_credentials(env: dict[str, str]) -> None:
    settings = S3Settings.from_url("s3://b", env)
    with pytest.raises(errors.CredentialsNotFound, match="no S3 credentials found"):
        settings.credential_source(env)


def test_instance_metadata_only_when_the_url_asks() -> None:
    settings = S3Settings.from_url("s3://b/p?instance_metadata=true", {})
    assert settings.instance_metadata
    assert "instance_metadata=true" in settings.url
    assert S3Settings.from_url(settings.url, {}) == settings
    assert not S3Settings.from_url("s3://b/p?instance_metadata=false", {}).instance_metadata
    with pytest.raises(errors.InvalidArgument, match="exclude each other"):
        S3Settings.from_url("s3://b?instance_metadata=true&anonymous=true", {})
    # Opening it sends nothing yet; the client is left to its chain (which ends there).
    store = S3Store(settings)
    assert not {"access_key_id", "web_identity_token_file"} & set(store._store.config)


def test_web_identity_from_the_environment_reaches_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in WEB_IDENTITY.items():
        monkeypatch.setenv(name, value)
    store = open_store("s3://b/p")
    assert isinstance(store, S3Store)
    config = store._store.config
    assert config["web_identity_token_file"] == WEB_IDENTITY["AWS_WEB_IDENTITY_TOKEN_FILE"]
    assert config["role_arn"] == WEB_IDENTITY["AWS_ROLE_ARN"]
    assert "access_key_id" not in config


def test_settings_without_keys_take_the_ambient_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator builds settings itself for a backend without a Secret: the pod's own
    environment (a service account's role) supplies them, and nothing else does."""
    settings = S3Settings(bucket="b", endpoint="http://127.0.0.1:9")
    with pytest.raises(errors.CredentialsNotFound):
        S3Store(settings)
    for name, value in WEB_IDENTITY.items():
        monkeypatch.setenv(name, value)
    assert settings.credential_source(os.environ) == "web-identity"
    S3Store(settings)


def test_half_a_web_identity_in_settings_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="AWS_ROLE_ARN"):
        S3Settings(bucket="b", web_identity_token_file="/token")


@pytest.mark.root
def test_cli_without_credentials_says_none_were_found(tmp_path: Path) -> None:
    """The whole CLI, in a network namespace with no route anywhere: one line, exit 9."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed: hack/debian-packages.txt"
    kvol = Path(sys.executable).parent / "kvol"
    env = _without_aws(dict(os.environ)) | {"HOME": str(tmp_path), "PYTHONSAFEPATH": "1"}
    result = subprocess.run(
        [unshare, "--net", str(kvol), "--store", "s3://some-bucket/kvol", "volume", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 9, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no S3 credentials found" in lines[0]
