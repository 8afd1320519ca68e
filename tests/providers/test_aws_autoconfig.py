"""aws auto-configuration from a temp HOME (~/.aws files) and environment variables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.clock import FakeClock
from broker.errors import InvalidArgument
from broker.model import AutoConfigured, AutoConfigureOptions
from broker.providers.aws import AwsProvider
from broker.providers.base import ProviderContext
from tests.servers.moto import aws_connector, make_aws_env_safe

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ROLE = "arn:aws:iam::123456789012:role/deploy"

CREDENTIALS = """\
[default]
aws_access_key_id = AKIADEFAULTKEY000000
aws_secret_access_key = default-secret

[ci]
aws_access_key_id = AKIACIKEY00000000000
aws_secret_access_key = ci-secret

[temp]
aws_access_key_id = ASIATEMPKEY000000000
aws_secret_access_key = temp-secret
aws_session_token = temp-token
"""

CONFIG = """\
[default]
region = eu-west-1

[profile ci]
region = eu-central-1

[profile deploy]
role_arn = arn:aws:iam::123456789012:role/deploy
source_profile = ci
region = us-west-2

[profile temp]
region = ap-south-1

[profile sso]
sso_session = corp
region = us-east-1

[profile chained]
role_arn = arn:aws:iam::123456789012:role/deploy
credential_source = Ec2InstanceMetadata
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_aws_env_safe(monkeypatch)
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(CREDENTIALS)
    (aws / "config").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def provider() -> AwsProvider:
    return AwsProvider(ProviderContext(clock=FakeClock(start=NOW)))


def configure(
    provider: AwsProvider,
    env: dict[str, str],
    auth_method: str | None = None,
    **options: str,
) -> AutoConfigured:
    return provider.auto_configure(AutoConfigureOptions(auth_method, options=options), env)


def test_plain_keys_become_session_token(provider: AwsProvider, home: Path) -> None:
    found = configure(provider, {"HOME": str(home)})
    assert found.auth_method == "session-token"
    assert found.config == {
        "region": "eu-west-1",
        "aws_access_key_id": "AKIADEFAULTKEY000000",
        "aws_secret_access_key": "default-secret",
    }
    assert found.expires_at is None
    # What auto-configuration finds is a valid connector.
    assert aws_connector(provider, found.auth_method, **found.config)


def test_another_method_can_be_asked_for(provider: AwsProvider, home: Path) -> None:
    env = {"HOME": str(home)}
    assert configure(provider, env, "secret-key").auth_method == "secret-key"
    assert configure(provider, env, "federation-token").auth_method == "federation-token"
    with pytest.raises(InvalidArgument) as err:
        configure(provider, env, "sts-token")
    assert err.value.field == "aws_session_token"
    assert "session-token" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        configure(provider, env, "iam-role")
    assert err.value.field == "role_arn"
    found = configure(provider, env, "iam-role", role_arn=ROLE)
    assert found.config["role_arn"] == ROLE
    implicit = configure(provider, env, "implicit", profile="ci")
    assert implicit.config == {"region": "eu-central-1", "profile_name": "ci"}


def test_role_profile_becomes_iam_role(provider: AwsProvider, home: Path) -> None:
    found = configure(provider, {"HOME": str(home), "AWS_PROFILE": "deploy"})
    assert found.auth_method == "iam-role"
    assert found.config == {
        "region": "us-west-2",
        "aws_access_key_id": "AKIACIKEY00000000000",
        "aws_secret_access_key": "ci-secret",
        "role_arn": ROLE,
    }
    assert aws_connector(provider, found.auth_method, **found.config)


def test_session_token_becomes_sts_token_with_a_conservative_expiry(
    provider: AwsProvider, home: Path
) -> None:
    with capture_logs() as logs:
        found = configure(provider, {"HOME": str(home)}, profile="temp")
    assert found.auth_method == "sts-token"
    assert found.config["aws_session_token"] == "temp-token"
    assert found.config["region"] == "ap-south-1"
    assert found.expires_at == NOW + timedelta(hours=1)
    [warning] = [e for e in logs if e["event"] == "aws_session_token_expiry_unknown"]
    assert warning["log_level"] == "warning"
    assert "temp-token" not in str(logs) and "temp-secret" not in str(logs)
    given = configure(provider, {"HOME": str(home)}, profile="temp", expires_at="2030-01-01T05:00Z")
    assert given.expires_at == NOW + timedelta(hours=5)
    with pytest.raises(InvalidArgument) as err:
        configure(provider, {"HOME": str(home)}, "session-token", profile="temp")
    assert err.value.field == "aws_session_token"


def test_environment_keys_win_unless_a_profile_is_asked_for(
    provider: AwsProvider, home: Path
) -> None:
    env = {
        "HOME": str(home),
        "AWS_PROFILE": "ci",
        "AWS_ACCESS_KEY_ID": "ASIAENVKEY0000000000",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-token",
        "AWS_CREDENTIAL_EXPIRATION": "2030-01-01T03:00:00Z",
        "AWS_REGION": "sa-east-1",
    }
    found = configure(provider, env)
    assert found.auth_method == "sts-token"
    assert found.config["aws_access_key_id"] == "ASIAENVKEY0000000000"
    assert found.config["region"] == "sa-east-1"
    assert found.expires_at == NOW + timedelta(hours=3)
    explicit = configure(provider, env, profile="ci", region="us-east-2")
    assert explicit.config["aws_access_key_id"] == "AKIACIKEY00000000000"
    assert explicit.config["region"] == "us-east-2"
    assert explicit.auth_method == "session-token"


def test_reads_the_given_environment_not_the_process_one(
    provider: AwsProvider, home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The process environment (made safe by the fixture) holds other keys and no files.
    files = tmp_path_factory.mktemp("elsewhere")
    (files / "creds").write_text(
        "[default]\naws_access_key_id = AKIAFILEKEY000000000\naws_secret_access_key = file-secret\n"
    )
    found = configure(
        provider,
        {"HOME": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": str(files / "creds")},
        region="eu-north-1",
    )
    assert found.config["aws_access_key_id"] == "AKIAFILEKEY000000000"
    assert configure(provider, {"HOME": str(home)}).config["aws_access_key_id"] == (
        "AKIADEFAULTKEY000000"
    )


@pytest.mark.parametrize(
    ("env", "options", "field", "words"),
    [
        ({"AWS_PROFILE": "nope"}, {}, "profile", "'nope'"),
        ({}, {"profile": "sso"}, "profile", "no access keys"),
        ({}, {"profile": "chained"}, "profile", "credential_source"),
        ({"HOME": "/nonexistent"}, {}, "aws_access_key_id", "no AWS credentials"),
        ({}, {"profile": "ci", "region": "Mars"}, "region", "Mars"),
    ],
)
def test_unusable_environments_are_explained(
    provider: AwsProvider,
    home: Path,
    env: dict[str, str],
    options: dict[str, str],
    field: str,
    words: str,
) -> None:
    with pytest.raises(InvalidArgument) as err:
        configure(provider, {"HOME": str(home), **env}, **options)
    assert err.value.field == field
    assert words in err.value.message


def test_missing_region_names_region(provider: AwsProvider, tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "AKIAENVKEY0000000000",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
    }
    with pytest.raises(InvalidArgument) as err:
        configure(provider, env)
    assert err.value.field == "region"
    assert configure(provider, {**env, "AWS_DEFAULT_REGION": "eu-west-3"}).config["region"] == (
        "eu-west-3"
    )


def test_broken_files_are_refused_without_echoing_them(
    provider: AwsProvider, tmp_path: Path
) -> None:
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("aws_secret_access_key = leaked-secret\n[broken\n")
    with pytest.raises(InvalidArgument) as err:
        configure(provider, {"HOME": str(tmp_path)}, region="eu-west-1")
    assert "leaked-secret" not in err.value.message
    assert "credentials" in err.value.message
