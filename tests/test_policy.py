"""The pure renewal rules: margins, renew points and their jitter, states, backoff."""

from __future__ import annotations

import itertools
import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from broker.cache import policy
from broker.cache.policy import TokenState
from broker.model import ClientCredential

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def cred(
    connector_type: str = "gcp",
    lifetime: timedelta | None = timedelta(hours=1),
    *,
    issued: bool = True,
) -> ClientCredential:
    return ClientCredential(
        connector_type=connector_type,
        auth_method="test",
        resource_type="test-resource",
        resource_id="r",
        config={"token": "x"},
        expires_at=None if lifetime is None else T0 + lifetime,
        issued_at=T0 if issued else None,
    )


@pytest.mark.parametrize(
    ("kind", "lifetime", "expected"),
    [
        ("aws", timedelta(hours=1), timedelta(minutes=15)),
        ("aws", timedelta(hours=12), timedelta(minutes=15)),
        # Not a quarter of the lifetime: the SDKs' 15 minutes whenever 1/4 stays servable.
        ("aws", timedelta(minutes=30), timedelta(minutes=15)),
        ("aws", timedelta(minutes=20), timedelta(minutes=15)),
        ("gcp", timedelta(hours=1), timedelta(minutes=4)),
        ("gcp", timedelta(seconds=320), timedelta(minutes=4)),
        ("kubernetes", timedelta(minutes=14), timedelta(seconds=60)),
        ("kubernetes", timedelta(minutes=2), timedelta(seconds=60)),
        ("kubernetes", timedelta(seconds=80), timedelta(seconds=60)),
        ("docker", timedelta(hours=12), timedelta(minutes=5)),
        ("docker", timedelta(minutes=8), timedelta(minutes=5)),
        ("some-plugin", timedelta(hours=1), timedelta(seconds=60)),
    ],
)
def test_margin_per_kind_where_the_lifetime_allows(
    kind: str, lifetime: timedelta, expected: timedelta
) -> None:
    assert policy.margin(cred(kind, lifetime)) == expected


@pytest.mark.parametrize(
    ("kind", "lifetime", "expected"),
    [
        # STS's shortest session against the 15-minute margin: 3/4 of it, so that a
        # quarter (225 s) stays servable instead of none.
        ("aws", timedelta(minutes=15), timedelta(seconds=675)),
        ("aws", timedelta(minutes=18), timedelta(seconds=810)),
        ("gcp", timedelta(seconds=20), timedelta(seconds=15)),
        ("gcp", timedelta(seconds=8), timedelta(seconds=6)),
        ("kubernetes", timedelta(seconds=60), timedelta(seconds=45)),
        ("docker", timedelta(minutes=6), timedelta(seconds=270)),
    ],
)
def test_lifetimes_under_four_thirds_of_the_margin_keep_a_quarter_servable(
    kind: str, lifetime: timedelta, expected: timedelta
) -> None:
    c = cred(kind, lifetime)
    assert policy.margin(c) == expected
    assert policy.margin(c) < policy.kind_margin(c)
    assert lifetime - policy.margin(c) == lifetime / 4


@pytest.mark.parametrize("kind", ["aws", "gcp", "kubernetes", "docker", "some-plugin"])
def test_the_margin_never_shrinks_as_the_lifetime_grows(kind: str) -> None:
    """Continuous and monotone: no lifetime just above a threshold is left with less."""
    previous = timedelta(0)
    for seconds in range(1, 3 * 3600, 7):
        m = policy.margin(cred(kind, timedelta(seconds=seconds)))
        assert m >= previous
        assert timedelta(seconds=seconds) - m >= timedelta(seconds=seconds) / 4
        previous = m
    assert previous == policy.kind_margin(cred(kind))


def test_unknown_issue_time_gets_the_kind_margin() -> None:
    assert policy.margin(cred("aws", timedelta(minutes=20), issued=False)) == timedelta(minutes=15)
    # A stored 40-second STS token (the issue's case): nobody declared its lifetime, so
    # it is inside the 15-minute margin from the start and never served.
    token = cred("aws", timedelta(seconds=40), issued=False)
    assert policy.margin(token) == timedelta(minutes=15)
    assert policy.state(token, T0) is TokenState.INVALID


def test_the_margin_depends_on_the_credential_only_not_on_when_it_was_seen() -> None:
    """The same token got again later (after an update, a restart, an eviction) keeps
    its margin: nothing about the moment of minting enters it."""
    stored = cred("aws", timedelta(minutes=50), issued=False)
    declared = cred("gcp", timedelta(seconds=100))
    for c in (stored, declared):
        limits = {policy.invalid_at(c)}
        rng = random.Random(1)
        for seen in range(0, 40, 3):
            since = T0 + timedelta(seconds=seen)
            assert policy.renew_at(c, rng, since) is not None
            limits.add(policy.invalid_at(c))
        assert len(limits) == 1
    assert policy.invalid_at(stored) == T0 + timedelta(minutes=35)
    assert policy.invalid_at(declared) == T0 + timedelta(seconds=25)


def test_an_issue_time_at_or_after_the_expiry_is_no_lifetime() -> None:
    """Clock skew between an upstream and this host: unknown, the whole margin."""
    c = cred("gcp", timedelta(hours=1))
    skewed = ClientCredential(**{**vars(c), "issued_at": c.expires_at})
    assert policy.lifetime(skewed) is None
    assert policy.margin(skewed) == timedelta(minutes=4)


@pytest.mark.parametrize(
    ("connector_type", "resource_type", "kind"),
    [
        ("aws", None, "aws"),
        ("aws", "aws-generic", "aws"),
        ("aws", "s3-bucket", "aws"),
        ("aws", "kubernetes-cluster", "kubernetes"),
        ("aws", "docker-registry", "docker"),
        ("gcp", "gcs-bucket", "gcp"),
        ("gcp", "kubernetes-cluster", "kubernetes"),
        ("gcp", "docker-registry", "docker"),
        ("kubernetes", "kubernetes-cluster", "kubernetes"),
        ("docker", "docker-registry", "docker"),
    ],
)
def test_client_kind_of_each_resource_type(
    connector_type: str, resource_type: str | None, kind: str
) -> None:
    assert policy.client_kind(connector_type, resource_type) == kind


def test_long_lived_credentials_are_always_fresh_and_never_renewed() -> None:
    c = cred("aws", None)
    rng = random.Random(1)
    assert policy.invalid_at(c) is None
    assert policy.renew_at(c, rng) is None
    for years in (0, 1, 100):
        assert policy.state(c, T0 + timedelta(days=365 * years)) is TokenState.FRESH


def test_state_moves_fresh_stale_invalid() -> None:
    c = cred("gcp", timedelta(hours=1))  # margin 4 min, servable 56 min
    stale_at = T0 + timedelta(minutes=30)
    assert policy.state(c, T0, stale_at) is TokenState.FRESH
    assert policy.state(c, stale_at - timedelta(seconds=1), stale_at) is TokenState.FRESH
    assert policy.state(c, stale_at, stale_at) is TokenState.STALE
    assert policy.state(c, T0 + timedelta(minutes=55, seconds=59), stale_at) is TokenState.STALE
    assert policy.state(c, T0 + timedelta(minutes=56), stale_at) is TokenState.INVALID
    assert policy.state(c, T0 + timedelta(hours=2), stale_at) is TokenState.INVALID


def test_state_without_a_drawn_point_uses_the_centre() -> None:
    c = cred("gcp", timedelta(hours=1))
    centre = T0 + timedelta(minutes=56) - timedelta(minutes=56) / 3
    assert policy.state(c, centre - timedelta(seconds=1)) is TokenState.FRESH
    assert policy.state(c, centre) is TokenState.STALE


def test_a_credential_issued_already_expired_is_invalid() -> None:
    c = cred("gcp", timedelta(0))
    assert policy.margin(c) == timedelta(minutes=4)  # no lifetime: the whole margin
    assert policy.state(c, T0) is TokenState.INVALID
    assert policy.renew_at(c, random.Random(1)) == T0 - timedelta(minutes=4)


def _renew_fractions(c: ClientCredential, samples: int) -> list[float]:
    """Where each drawn point lies: the fraction of the servable lifetime still left."""
    rng = random.Random(42)
    limit = policy.invalid_at(c)
    assert limit is not None and c.issued_at is not None
    servable = limit - c.issued_at
    points = [policy.renew_at(c, rng) for _ in range(samples)]
    return [(limit - p) / servable for p in points if p is not None]


@pytest.mark.parametrize(
    ("kind", "lifetime"),
    [
        ("gcp", timedelta(hours=1)),
        ("aws", timedelta(hours=1)),
        ("aws", timedelta(minutes=15)),
        ("kubernetes", timedelta(minutes=14)),
        ("gcp", timedelta(seconds=20)),
    ],
)
def test_renew_points_are_jittered_around_a_third_of_the_lifetime(
    kind: str, lifetime: timedelta
) -> None:
    fractions = _renew_fractions(cred(kind, lifetime), 20_000)
    low, high = 1 / 3 - 0.10, 1 / 3 + 0.10
    assert all(low <= f <= high for f in fractions)
    # Spread over the whole window, not bunched: the extremes are reached and
    # the draw is uniform (the standard deviation of a uniform draw).
    assert min(fractions) < low + 0.002
    assert max(fractions) > high - 0.002
    assert statistics.pstdev(fractions) == pytest.approx((high - low) / 12**0.5, rel=0.03)
    assert statistics.mean(fractions) == pytest.approx(1 / 3, abs=0.003)


def test_many_equal_credentials_do_not_renew_in_the_same_second() -> None:
    c = cred("gcp", timedelta(hours=1))
    rng = random.Random(7)
    points = [policy.renew_at(c, rng) for _ in range(10_000)]
    per_second: dict[int, int] = {}
    for p in points:
        assert p is not None
        second = int((p - T0).total_seconds())
        per_second[second] = per_second.get(second, 0) + 1
    window = 0.2 * 56 * 60  # +/- 10 % of the 56-minute servable lifetime
    mean = 10_000 / window
    assert len(per_second) > 0.95 * window
    assert max(per_second.values()) <= 3 * mean


@pytest.mark.parametrize("kind", ["aws", "gcp", "kubernetes", "docker", "other"])
def test_renew_point_is_never_inside_the_margin(kind: str) -> None:
    rng = random.Random(3)
    for seconds in (1, 10, 60, 300, 900, 901, 3600, 43_200, 129_600):
        c = cred(kind, timedelta(seconds=seconds))
        limit = policy.invalid_at(c)
        assert limit is not None
        for _ in range(200):
            point = policy.renew_at(c, rng)
            assert point is not None
            assert T0 <= point <= limit
            # Lead time for retries: at least 23 % of the servable lifetime.
            assert (limit - point) >= (limit - T0) * 0.2333


def test_aws_hour_keys_renew_well_before_the_sdk_window() -> None:
    c = cred("aws", timedelta(hours=1))
    fractions = _renew_fractions(c, 2000)
    remaining = [timedelta(minutes=15) + f * timedelta(minutes=45) for f in fractions]
    assert min(remaining) > timedelta(minutes=25)
    assert max(remaining) < timedelta(minutes=35)


def test_renew_point_without_issue_time_is_ahead_of_the_margin() -> None:
    c = cred("gcp", timedelta(hours=1), issued=False)
    limit = policy.invalid_at(c)
    assert limit == T0 + timedelta(minutes=56)
    rng = random.Random(5)
    for _ in range(500):
        point = policy.renew_at(c, rng)
        assert point is not None
        assert limit - timedelta(minutes=6) < point < limit - timedelta(minutes=2)


def test_backoff_grows_exponentially_with_jitter() -> None:
    rng = random.Random(11)
    for attempt in range(1, 7):
        ceiling = policy.RETRY_BASE_SECONDS * 2 ** (attempt - 1)
        delays = [policy.backoff(attempt, rng) for _ in range(500)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len({round(d, 6) for d in delays}) > 400  # jittered, not fixed
        assert min(delays) < ceiling / 2 * 1.02 and max(delays) > ceiling * 0.98
    means = [statistics.mean(policy.backoff(a, rng) for _ in range(300)) for a in range(1, 7)]
    assert all(later > earlier * 1.7 for earlier, later in itertools.pairwise(means))


def test_backoff_is_capped() -> None:
    rng = random.Random(12)
    for attempt in (7, 10, 50, 10_000):
        delays = [policy.backoff(attempt, rng) for _ in range(300)]
        assert all(policy.RETRY_CAP_SECONDS / 2 <= d <= policy.RETRY_CAP_SECONDS for d in delays)


def test_backoff_never_passes_the_margin_of_a_credential_still_served() -> None:
    rng = random.Random(13)
    assert all(policy.backoff(9, rng, until=12.5) <= 12.5 for _ in range(100))
    assert policy.backoff(9, rng, until=-3.0) == 0.0
    assert policy.backoff(1, rng, until=1000.0) <= 1.0


@pytest.mark.parametrize(
    ("lifetime", "cap"),
    [
        (None, 60.0),
        (timedelta(hours=1), 60.0),
        (timedelta(minutes=15), 60.0),
        (timedelta(seconds=20), 5.0),
        (timedelta(seconds=2), 1.0),
    ],
)
def test_retry_cap_scales_down_for_short_lifetimes(lifetime: timedelta | None, cap: float) -> None:
    assert policy.retry_cap(lifetime) == cap
    rng = random.Random(14)
    assert all(cap / 2 <= policy.backoff(30, rng, cap=cap) <= cap for _ in range(100))


def test_spread_random_keeps_the_busiest_second_near_the_mean() -> None:
    """10,000 credentials minted together: renewals spread evenly over the jitter window."""
    from collections import Counter

    from broker.cache.policy import SpreadRandom

    window = 672.0  # seconds: ±10 % of a 1 h token's servable lifetime
    for seed in range(5):
        rng = SpreadRandom(seed)
        draws = [rng.uniform(0.0, window) for _ in range(10_000)]
        assert min(draws) >= 0.0 and max(draws) <= window
        per_second = Counter(int(d) for d in draws)
        mean = 10_000 / window
        assert max(per_second.values()) <= 1.5 * mean
