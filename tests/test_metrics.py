"""Prometheus metrics: the collector reads the cache's counters, the daemon serves them."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from dataclasses import fields
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker import __version__
from broker.cache.cache import CacheCounters
from broker.metrics import COUNTERS, GAUGES, build_registry
from tests.daemon import BROKER, _clean_env, running_daemon


def samples(text: str) -> dict[str, float]:
    return {
        sample.name + ("{" + ",".join(f"{k}={v}" for k, v in sample.labels.items()) + "}")
        if sample.labels
        else sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_cache_counter_is_exported() -> None:
    counters = CacheCounters()
    for i, f in enumerate(fields(CacheCounters), start=1):
        setattr(counters, f.name, i)
    stats = {"entries": 3, "subscribers": 2, **vars(counters)}
    scraped = samples(generate_latest(build_registry(lambda: stats)).decode())
    for i, f in enumerate(fields(CacheCounters), start=1):
        if f.name in GAUGES:  # a level (the shortest renewal lead), not a running total
            assert scraped[GAUGES[f.name][0]] == i, f.name
            continue
        name = COUNTERS.get(f.name, (f"broker_cache_{f.name}", ""))[0]
        assert scraped[f"{name}_total"] == i, f.name
    assert scraped[GAUGES["entries"][0]] == 3
    assert scraped[GAUGES["subscribers"][0]] == 2
    assert scraped[f"broker_build_info{{version={__version__}}}"] == 1
    assert "process_start_time_seconds" in scraped


def test_a_counter_added_later_is_exported_under_a_derived_name() -> None:
    scraped = samples(generate_latest(build_registry(lambda: {"stampedes": 4})).decode())
    assert scraped["broker_cache_stampedes_total"] == 4


def test_counters_are_read_at_scrape_time_not_copied() -> None:
    counters = CacheCounters()
    registry = build_registry(lambda: vars(counters))
    counters.mints = 5
    assert samples(generate_latest(registry).decode())["broker_credential_mints_total"] == 5
    counters.mints = 6
    assert samples(generate_latest(registry).decode())["broker_credential_mints_total"] == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_daemon_serves_metrics_that_follow_its_cache(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with running_daemon(tmp_path / "d", "--metrics", f"127.0.0.1:{port}") as daemon:
        daemon.cli(
            "connector",
            "register",
            "ci",
            "--type",
            "docker",
            "--auth-method",
            "password",
            "username=u",
            "password=p",
            "registry=registry.example.test",
            "--no-verify",
        )
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain; version=")
            before = samples(reply.read().decode())
        assert before["broker_credential_mints_total"] == 0
        daemon.cli("credentials", "get", "ci", "--output", "json")
        daemon.cli("credentials", "get", "ci", "--output", "json")
        with urllib.request.urlopen(url, timeout=5) as reply:
            after = samples(reply.read().decode())
    assert after["broker_credential_mints_total"] == 1
    assert after["broker_cache_misses_total"] == 1
    assert after["broker_cache_hits_total"] >= 1
    assert after["broker_cache_entries"] == 1
    assert after["broker_credentials_served_inside_margin_total"] == 0
    assert after["broker_upstream_mints_total{connector_type=docker}"] == 1
    assert after["broker_upstream_mint_failures_total{connector_type=docker}"] == 0
    assert after["broker_upstream_mint_seconds_count{connector_type=docker}"] == 1


def test_metrics_address_in_use_is_a_named_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*BROKER, "serve", "--data-dir", str(tmp_path / "d"), "--metrics", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            env=_clean_env(None),
            timeout=60,
        )
    assert result.returncode == 1
    assert "error: setting 'metrics': cannot listen on 127.0.0.1" in result.stderr
    assert not (tmp_path / "d" / "broker.sock").exists()
