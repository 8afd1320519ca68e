"""Daemon configuration: the documented file, the validation table, precedence, `config show`.

Bad input must be refused with the key at fault named (in the error's field
and its message), by the loader and by the real `broker` command alike.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings, describe, load_settings, setting_fields
from broker.errors import InvalidArgument
from broker.identity.attestors.settings import AttestorSettings, DockerSettings, KubernetesSettings
from tests.daemon import BROKER, _clean_env, running_daemon

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "broker.toml"


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return load_settings(path, env=env or {})


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER, *args], capture_output=True, text=True, env=_clean_env(env), timeout=60
    )


# -- the documented example file ---------------------------------------------------


def _uncommented(text: str) -> str:
    """The example with every ``# key = value`` line switched on."""
    return "\n".join(line[2:] for line in text.splitlines() if re.match(r"# [a-z_]+ = ", line))


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("broker_toml", ROOT / "deploy/broker_toml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_file_is_up_to_date() -> None:
    assert EXAMPLE.read_text() == _generator().render(), (
        "deploy/broker.toml is out of date: run `python deploy/broker_toml.py`"
    )


def test_example_file_documents_every_setting_with_its_default(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    lines = text.splitlines()
    for f in setting_fields():
        at = next((i for i, line in enumerate(lines) if line.startswith(f"# {f.name} = ")), None)
        assert at is not None, f"deploy/broker.toml does not list '{f.name}'"
        assert lines[at - 1] == f"# {f.metadata['doc']}", f"doc of '{f.name}' out of date"
    # Switching every line on changes nothing: the values shown are the defaults.
    assert replace(load_text(tmp_path, _uncommented(text)), config_file=None) == Settings()
    assert tomllib.loads(text) == {}  # as shipped it sets nothing
    # The policy example is valid as written.
    example = "\n".join(line[3:] for line in lines if line.startswith("#> "))
    loaded = load_text(tmp_path, example)
    assert [r.role for r in loaded.policy_rules] == ["consumer", "admin"]
    # So is the attestors example, every key at its default.
    assert loaded.attestors == AttestorSettings(
        docker=DockerSettings(), kubernetes=KubernetesSettings(node_name="node-1")
    )


# -- the validation table ------------------------------------------------------------

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    (
        'log_level = "debug"\nlog_format = "console"',
        {"log_level": "debug", "log_format": "console"},
    ),
    ('data-dir = "/srv/broker"', {"data_dir": Path("/srv/broker")}),  # dashes as in the flags
    ('socket = ""', {"socket": None}),  # empty: the computed default
    ("cache_max_entries = 5\ncache_idle_seconds = 0", {"cache_max_entries": 5}),
    ("shutdown_grace_seconds = 2.5", {"shutdown_grace_seconds": 2.5}),
    ('metrics = "[::1]:9464"', {"metrics": "[::1]:9464"}),
    ('tcp = "127.0.0.1:7000"\ninsecure = true', {"tcp": "127.0.0.1:7000", "insecure": True}),
    (
        'tcp = "0.0.0.0:7443"\ntls_cert = "/etc/b/c.pem"\ntls_key = "/etc/b/k.pem"\n'
        'tls_client_ca = "/etc/b/ca.pem"',
        {"tcp": "0.0.0.0:7443", "tls_client_ca": Path("/etc/b/ca.pem")},
    ),
    ("enable_implicit_auth_methods = true", {"enable_implicit_auth_methods": True}),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_good_files(tmp_path: Path, text: str, expected: dict[str, Any]) -> None:
    settings = load_text(tmp_path, text)
    for key, value in expected.items():
        assert getattr(settings, key) == value


BAD: list[tuple[str, str, str]] = [
    # (file, key named, words of the reason)
    ('log_levl = "debug"', "log_levl", "unknown setting"),
    ('[server]\nsocket = "/x"', "server", "unknown section"),
    ('log_level = "loud"', "log_level", "debug, info, warning or error"),
    ('log_format = "xml"', "log_format", "auto, json or console"),
    ("cache_max_entries = 0", "cache_max_entries", "positive whole number"),
    ('cache_max_entries = "many"', "cache_max_entries", "positive whole number"),
    ("cache_max_entries = true", "cache_max_entries", "positive whole number"),
    ("shutdown_grace_seconds = -1", "shutdown_grace_seconds", "non-negative number"),
    ('insecure = "maybe"', "insecure", "true or false"),
    ("data_dir = 5", "data_dir", "a path"),
    ("socket_group = 5", "socket_group", "text"),
    ('metrics = "9090"', "metrics", "HOST:PORT"),
    ('metrics = "localhost:99999"', "metrics", "HOST:PORT"),
    ('tcp = "0.0.0.0:7000"', "tcp", "needs TLS"),
    ('tcp = "10.1.2.3:7000"\ninsecure = true', "tcp", "non-loopback"),
    ('tcp = "127.0.0.1:7000"\ntls_cert = "/c.pem"', "tls_cert", "go together"),
    ('tls_client_ca = "/ca.pem"', "tls_client_ca", "needs tls_cert"),
    ("log_level = ", "config", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_files_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_text(tmp_path, text)
    assert info.value.field == key
    assert reason in info.value.message
    if key != "config":
        assert f"'{key}'" in info.value.message or f"[{key}]" in info.value.message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist") as info:
        load_settings(tmp_path / "nope.toml", env={})
    assert str(tmp_path / "nope.toml") in info.value.message


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"BROKER_CACHE_MAX_ENTRIES": "lots"}, "cache_max_entries"),
        ({"BROKER_INSECURE": "perhaps"}, "insecure"),
        ({"BROKER_LOG_LEVEL": "trace"}, "log_level"),
    ],
)
def test_bad_environment_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_settings(None, env=env)
    assert info.value.field == key


# -- precedence: defaults < file < env < flags ----------------------------------------


def test_precedence(tmp_path: Path) -> None:
    text = 'log_level = "warning"\ncache_max_entries = 7\nmetrics = "127.0.0.1:9000"'
    env = {"BROKER_LOG_LEVEL": "error", "BROKER_METRICS": "127.0.0.1:9100"}
    settings = load_text(tmp_path, text, env)
    assert settings.shutdown_grace_seconds == 10.0  # default
    assert settings.cache_max_entries == 7  # file
    assert settings.log_level == "error"  # env over file
    assert settings.metrics == "127.0.0.1:9100"
    flagged = load_settings(
        tmp_path / "broker.toml", env=env, overrides={"metrics": "127.0.0.1:9200", "tcp": None}
    )
    assert flagged.metrics == "127.0.0.1:9200"  # flag over env
    assert flagged.tcp is None  # a flag not given leaves the lower layers alone
    assert flagged.log_level == "error"


def test_broker_config_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text("discovery_concurrency = 3")
    assert load_settings(None, env={"BROKER_CONFIG": str(path)}).discovery_concurrency == 3


def test_daemon_listens_where_flags_env_and_file_say(tmp_path: Path) -> None:
    """The real daemon: --socket beats BROKER_SOCKET, which beats the file."""
    config = tmp_path / "broker.toml"
    config.write_text(f'socket = "{tmp_path / "file.sock"}"\nlog_level = "debug"')
    data = tmp_path / "data"
    env = {"BROKER_SOCKET": str(tmp_path / "env.sock")}
    flag = data / "broker.sock"
    with running_daemon(data, "--config", str(config), "--socket", str(flag), env=env) as daemon:
        assert daemon.socket == flag
        assert flag.exists()
        assert not (tmp_path / "file.sock").exists()
        assert not (tmp_path / "env.sock").exists()
    # Without the flag, the env wins over the file.
    shown = broker("config", "show", "--config", str(config), "--output", "json", env=env)
    assert json.loads(shown.stdout)["socket"] == str(tmp_path / "env.sock")


# -- the command line ------------------------------------------------------------------


def test_config_show_json_is_the_effective_config_with_secrets_hidden(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('log_level = "warning"\ncache_max_entries = 12')
    key = "c2VjcmV0LWtleS1ub3QtZm9yLW91dHB1dC1wbGVhc2UhIQ=="
    result = broker(
        "config",
        "show",
        "--config",
        str(config),
        "--output",
        "json",
        env={"BROKER_DISCOVERY_CONCURRENCY": "5", "BROKER_SECRET_KEY": key},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown) == {f.name for f in setting_fields()}
    assert shown["log_level"] == "warning"
    assert shown["cache_max_entries"] == 12
    assert shown["discovery_concurrency"] == 5
    assert shown["shutdown_grace_seconds"] == 10.0
    assert shown["socket"] is None
    assert key not in result.stdout + result.stderr
    assert shown == json.loads(
        json.dumps(describe(load_settings(config, env={"BROKER_DISCOVERY_CONCURRENCY": "5"})))
    )


def test_config_show_table_carries_the_meaning() -> None:
    result = broker("config", "show", "--local")
    assert result.returncode == 0, result.stderr
    assert "Prometheus metrics" in result.stdout


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("config", "show"), "cache_max_entries"),
        (("serve",), "cache_max_entries"),
    ],
)
def test_cli_refuses_bad_files_naming_the_key(
    tmp_path: Path, args: tuple[str, ...], key: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("cache_max_entries = -3")
    result = broker(*args, "--config", str(config), env={"BROKER_DATA_DIR": str(tmp_path / "d")})
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert f"'{key}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # refused before touching anything


# -- the event loop --------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_daemon_serves_on_either_event_loop(tmp_path: Path, loop: str) -> None:
    """The default loop and the opt-in uvloop: the ready line names the loop that runs,
    and a register + cache-hit get + watch's first event work on it."""
    env = {} if loop == "asyncio" else {"BROKER_EVENT_LOOP": "uvloop"}
    with running_daemon(tmp_path / "data", "--log-format", "json", env=env) as daemon:
        ready = [
            json.loads(line)
            for line in daemon.log().splitlines()
            if line.startswith("{") and '"daemon_ready"' in line
        ]
        assert [r["event_loop"] for r in ready] == [loop]
        daemon.cli(
            "connector", "register", "reg", "--type", "docker", "username=u",
            "password=p", "registry=registry.example:5000", "--no-verify",
        )  # fmt: skip
        first = daemon.cli_json("credentials", "get", "reg")
        again = daemon.cli_json("credentials", "get", "reg")
        assert first["config"]["username"] == again["config"]["username"] == "u"
        assert first["expires_at"] == again["expires_at"]  # a cache hit


def test_an_unknown_event_loop_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_text(tmp_path, 'event_loop = "trio"\n')
    assert info.value.field == "event_loop"
    assert "must be uvloop or asyncio" in info.value.message
