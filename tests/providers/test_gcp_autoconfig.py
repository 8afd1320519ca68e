"""gcp auto-configuration from Application Default Credentials in a given environment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.errors import FailedPrecondition, InvalidArgument
from broker.model import AutoConfigureOptions
from broker.providers.base import ProviderContext
from broker.providers.gcp import GcpProvider
from tests.servers.google_accounts import ServiceAccountKey, UserAccount, shared_rsa_key

TOKEN_URI = "http://127.0.0.1:9/token"


@pytest.fixture(autouse=True)
def _no_real_google(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    empty = tmp_path / "gcloud-empty"
    empty.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    yield


@pytest.fixture
def provider() -> GcpProvider:
    return GcpProvider(ProviderContext())


@pytest.fixture
def sa_key() -> ServiceAccountKey:
    return ServiceAccountKey(
        "auto@key-project.iam.gserviceaccount.com", "key-project", TOKEN_URI, shared_rsa_key()
    )


def gcloud_dir(tmp_path: Path, adc: dict[str, str] | None, project: str | None = None) -> Path:
    """A gcloud config dir with an ADC file and an active configuration naming ``project``."""
    directory = tmp_path / "gcloud"
    (directory / "configurations").mkdir(parents=True)
    if adc is not None:
        (directory / "application_default_credentials.json").write_text(json.dumps(adc))
    if project:
        (directory / "active_config").write_text("work\n")
        (directory / "configurations" / "config_work").write_text(
            f"[core]\naccount = bob@example.com\nproject = {project}\n"
        )
    return directory


def test_gcloud_adc_user_login_becomes_user_account(provider: GcpProvider, tmp_path: Path) -> None:
    user = UserAccount("bob@example.com", TOKEN_URI)
    directory = gcloud_dir(tmp_path, user.info(), project="gcloud-project")
    found = provider.auto_configure(AutoConfigureOptions(), {"CLOUDSDK_CONFIG": str(directory)})
    assert found.auth_method == "user-account"
    assert json.loads(str(found.config["user_account_json"])) == user.info()
    assert found.config["project_id"] == "gcloud-project"


def test_home_gcloud_dir_is_used_without_cloudsdk_config(
    provider: GcpProvider, tmp_path: Path
) -> None:
    user = UserAccount("bob@example.com", TOKEN_URI, quota_project_id="quota-project")
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    gcloud_dir(tmp_path, user.info()).rename(home / ".config" / "gcloud")
    found = provider.auto_configure(AutoConfigureOptions(), {"HOME": str(home)})
    assert found.auth_method == "user-account"
    assert found.config["project_id"] == "quota-project"


def test_google_application_credentials_wins(
    provider: GcpProvider, tmp_path: Path, sa_key: ServiceAccountKey
) -> None:
    path = sa_key.write(tmp_path / "key.json")
    user_dir = gcloud_dir(tmp_path, UserAccount("bob@example.com", TOKEN_URI).info())
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(path), "CLOUDSDK_CONFIG": str(user_dir)}
    found = provider.auto_configure(AutoConfigureOptions(resource_type="gcs-bucket"), env)
    assert found.auth_method == "service-account"
    assert json.loads(str(found.config["service_account_json"])) == sa_key.info()
    assert found.config["project_id"] == "key-project"
    assert found.resource_type == "gcs-bucket"
    found = provider.auto_configure(
        AutoConfigureOptions(), {**env, "GOOGLE_CLOUD_PROJECT": "env-project"}
    )
    assert found.config["project_id"] == "env-project"
    found = provider.auto_configure(
        AutoConfigureOptions(
            auth_method="impersonation",
            options={
                "project_id": "opt-project",
                "target_principal": "t@p.iam.gserviceaccount.com",
            },
        ),
        {**env, "GOOGLE_CLOUD_PROJECT": "env-project"},
    )
    assert found.auth_method == "impersonation"
    assert found.config["project_id"] == "opt-project"
    assert found.config["target_principal"] == "t@p.iam.gserviceaccount.com"


def test_nothing_found_or_mismatched_method(
    provider: GcpProvider, tmp_path: Path, sa_key: ServiceAccountKey
) -> None:
    empty = gcloud_dir(tmp_path, None)
    with pytest.raises(FailedPrecondition) as err:
        provider.auto_configure(AutoConfigureOptions(), {"CLOUDSDK_CONFIG": str(empty)})
    assert "gcloud auth application-default login" in str(err.value)
    with pytest.raises(FailedPrecondition) as err:
        provider.auto_configure(
            AutoConfigureOptions(), {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "nope.json")}
        )
    assert "nope.json" in str(err.value)
    path = sa_key.write(tmp_path / "key.json")
    with pytest.raises(InvalidArgument) as err:
        provider.auto_configure(
            AutoConfigureOptions(auth_method="user-account"),
            {"GOOGLE_APPLICATION_CREDENTIALS": str(path)},
        )
    assert err.value.field == "auth_method"
    assert "service-account, impersonation" in str(err.value)


def test_broken_adc_file_is_named_not_echoed(
    provider: GcpProvider, tmp_path: Path, sa_key: ServiceAccountKey
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(sa_key.json()[:300])
    with pytest.raises(InvalidArgument) as err:
        provider.auto_configure(
            AutoConfigureOptions(), {"GOOGLE_APPLICATION_CREDENTIALS": str(path)}
        )
    message = str(err.value)
    assert str(path) in message
    assert "not valid JSON" in message
    assert sa_key.private_key_pem.splitlines()[1] not in message


def test_implicit_takes_only_a_project(provider: GcpProvider, tmp_path: Path) -> None:
    found = provider.auto_configure(
        AutoConfigureOptions(auth_method="implicit"), {"CLOUDSDK_CORE_PROJECT": "core-project"}
    )
    assert (found.auth_method, dict(found.config)) == ("implicit", {"project_id": "core-project"})
