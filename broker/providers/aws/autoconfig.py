"""Auto-configuration from the AWS CLI environment of the caller (env vars, ~/.aws files).

Runs in the CLI process and reads only the environment it is given (its
``HOME`` included), never ``os.environ``, and makes no network call: what it
finds is sent to the daemon, which verifies it. Precedence follows the AWS
CLI: environment keys, unless a profile is asked for explicitly; then the
profile from ``~/.aws/credentials`` and ``~/.aws/config`` (``role_arn`` +
``source_profile`` profiles included). Long-lived keys become session-token
unless another method is asked for, so clients get temporary keys by default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from botocore.configloader import build_profile_map, raw_config_parse
from botocore.exceptions import BotoCoreError

from broker.errors import InvalidArgument
from broker.model import AutoConfigured, AutoConfigureOptions, Value
from broker.providers.aws.ids import check_region, check_role_arn
from broker.providers.aws.spec import (
    AUTH_FEDERATION_TOKEN,
    AUTH_IAM_ROLE,
    AUTH_IMPLICIT,
    AUTH_SECRET_KEY,
    AUTH_SESSION_TOKEN,
    AUTH_STS_TOKEN,
    SPEC,
)

#: Assumed lifetime of a session token whose expiry the environment does not tell.
UNKNOWN_TOKEN_LIFETIME = timedelta(hours=1)
_UNSUPPORTED_SOURCES = ("credential_source", "credential_process", "sso_session", "sso_start_url")

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Keys:
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    expires_at: datetime | None
    source: str


def auto_configure(
    options: AutoConfigureOptions, env: Mapping[str, str], now: datetime
) -> AutoConfigured:
    """Build an aws connector configuration from ``env`` and the files it points at."""
    opts = options.options
    home = env.get("HOME") or ""
    profiles = _profiles(_path(env.get("AWS_CONFIG_FILE") or "~/.aws/config", home), config=True)
    cred_profiles = _profiles(
        _path(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", home), config=False
    )
    explicit_profile = opts.get("profile") or None
    profile = explicit_profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    profile = profile or "default"
    section = {**profiles.get(profile, {}), **cred_profiles.get(profile, {})}

    role_arn: str | None = opts.get("role_arn") or None
    keys = None if explicit_profile else _env_keys(env)
    if keys is None:
        if profile not in profiles and profile not in cred_profiles:
            if explicit_profile or profile != "default":
                raise InvalidArgument(
                    f"AWS profile '{profile}' is not in the AWS config or credentials file",
                    field="profile",
                )
            raise InvalidArgument(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                "or configure a profile in ~/.aws/credentials",
                field="aws_access_key_id",
            )
        keys, profile_role = _profile_keys(profile, profiles, cred_profiles)
        role_arn = role_arn or profile_role

    region = (
        opts.get("region")
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or _text(section.get("region"))
    )
    if not region:
        raise InvalidArgument(
            f"no AWS region found: pass --region, set AWS_REGION, or set 'region' in "
            f"profile '{profile}'",
            field="region",
        )
    config: dict[str, Value] = {"region": check_region(region)}
    endpoint = opts.get("endpoint_url") or env.get("AWS_ENDPOINT_URL")
    endpoint = endpoint or _text(section.get("endpoint_url"))
    if endpoint:
        config["endpoint_url"] = endpoint

    method = _pick_method(options.auth_method, keys, role_arn)
    expires_at = None
    if method == AUTH_IMPLICIT:
        if explicit_profile:
            config["profile_name"] = explicit_profile
        if role_arn:
            config["role_arn"] = check_role_arn(role_arn)
        return AutoConfigured(auth_method=method, config=config)
    config["aws_access_key_id"] = keys.access_key_id
    config["aws_secret_access_key"] = keys.secret_access_key
    if method == AUTH_IAM_ROLE:
        assert role_arn is not None
        config["role_arn"] = check_role_arn(role_arn)
    if method == AUTH_STS_TOKEN:
        assert keys.session_token is not None
        config["aws_session_token"] = keys.session_token
        expires_at = _expiry(opts.get("expires_at"), "expires_at") or keys.expires_at
        if expires_at is None:
            expires_at = now + UNKNOWN_TOKEN_LIFETIME
            log.warning(
                "aws_session_token_expiry_unknown",
                source=keys.source,
                assumed_expires_at=expires_at.isoformat(),
                hint="pass --expires-at or set AWS_CREDENTIAL_EXPIRATION",
            )
    return AutoConfigured(auth_method=method, config=config, expires_at=expires_at)


def _pick_method(requested: str | None, keys: _Keys, role_arn: str | None) -> str:
    temporary = keys.session_token is not None
    if requested is None:
        if role_arn:
            requested = AUTH_IAM_ROLE
        elif temporary:
            requested = AUTH_STS_TOKEN
        else:
            requested = AUTH_SESSION_TOKEN
    if SPEC.auth_method(requested) is None:
        choices = ", ".join(m.auth_method for m in SPEC.auth_methods)
        raise InvalidArgument(
            f"auth method '{requested}' is not offered by connector type 'aws' (one of: {choices})",
            field="auth_method",
        )
    if requested == AUTH_STS_TOKEN and not temporary:
        raise InvalidArgument(
            f"auth method 'sts-token' needs a session token, but {keys.source} holds "
            "long-lived keys: use session-token (the daemon then mints temporary keys)",
            field="aws_session_token",
        )
    if requested == AUTH_IAM_ROLE and not role_arn:
        raise InvalidArgument(
            "auth method 'iam-role' needs a role: use a profile with role_arn or pass role_arn",
            field="role_arn",
        )
    long_lived_only = (AUTH_SECRET_KEY, AUTH_IAM_ROLE, AUTH_SESSION_TOKEN, AUTH_FEDERATION_TOKEN)
    if requested in long_lived_only and temporary:
        raise InvalidArgument(
            f"auth method '{requested}' needs long-lived access keys, but {keys.source} holds "
            "temporary ones (with a session token): use sts-token",
            field="aws_session_token",
        )
    return requested


def _env_keys(env: Mapping[str, str]) -> _Keys | None:
    key_id = env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        return None
    token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    expiry = _expiry(env.get("AWS_CREDENTIAL_EXPIRATION"), "AWS_CREDENTIAL_EXPIRATION")
    return _Keys(key_id, secret, token, expiry, "the environment variables")


def _profile_keys(
    profile: str,
    profiles: Mapping[str, Mapping[str, Any]],
    cred_profiles: Mapping[str, Mapping[str, Any]],
) -> tuple[_Keys, str | None]:
    section = {**profiles.get(profile, {}), **cred_profiles.get(profile, {})}
    role_arn = _text(section.get("role_arn"))
    if role_arn:
        source = _text(section.get("source_profile"))
        if not source:
            other = next((k for k in _UNSUPPORTED_SOURCES if k in section), "no source_profile")
            raise InvalidArgument(
                f"AWS profile '{profile}' assumes a role with {other}; auto-configuration "
                "supports role profiles with source_profile only",
                field="profile",
            )
        keys = _static_keys(source, profiles, cred_profiles)
        if keys is None:
            raise InvalidArgument(
                f"AWS profile '{profile}': its source_profile '{source}' holds no access keys",
                field="profile",
            )
        return keys, role_arn
    keys = _static_keys(profile, profiles, cred_profiles)
    if keys is None:
        used = next((k for k in _UNSUPPORTED_SOURCES if k in section), None)
        why = f" (it uses {used}, which is not supported)" if used else ""
        raise InvalidArgument(f"AWS profile '{profile}' holds no access keys{why}", field="profile")
    return keys, None


def _static_keys(
    profile: str,
    profiles: Mapping[str, Mapping[str, Any]],
    cred_profiles: Mapping[str, Mapping[str, Any]],
) -> _Keys | None:
    for where, table in (("credentials file", cred_profiles), ("config file", profiles)):
        section = table.get(profile, {})
        key_id = _text(section.get("aws_access_key_id"))
        secret = _text(section.get("aws_secret_access_key"))
        if key_id and secret:
            token = _text(section.get("aws_session_token")) or _text(
                section.get("aws_security_token")
            )
            return _Keys(key_id, secret, token, None, f"profile '{profile}' of the AWS {where}")
    return None


def _profiles(path: str, *, config: bool) -> dict[str, dict[str, Any]]:
    if not os.path.isfile(path):
        return {}
    try:
        parsed = raw_config_parse(path)
    except BotoCoreError:
        # The parser's message quotes the offending line, which may hold a secret.
        raise InvalidArgument(
            f"cannot parse AWS file {path}: not a valid INI file", field="profile"
        ) from None
    if config:
        return dict(build_profile_map(parsed).get("profiles", {}))
    return {name: dict(values) for name, values in parsed.items()}


def _expiry(raw: str | None, field: str) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{field} '{raw}' is not an ISO 8601 time", field=field) from None
    if value.tzinfo is None:
        raise InvalidArgument(f"{field} '{raw}' has no time zone", field=field)
    return value


def _path(path: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        return (home or "/nonexistent") + path[1:]
    return path


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None
