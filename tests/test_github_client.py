"""GitHub releases client and feed against the contract examples (shared/contracts/github/examples),
replayed with ``responses``: drafts and prereleases, Link pagination, ETag/304 polling, primary and
secondary rate limits (skip until allowed, said through health), and the token never leaking."""
from __future__ import annotations

import copy
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from hydra_engine.adapters.github_releases import DEFAULT_REPOS, GitHubReleasesClient, GitHubReleasesFeed
from hydra_engine.adapters.http import AuthError, RateLimited

UTC = timezone.utc
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "github" / "examples"
REPO = "anthropics/anthropic-sdk-python"
URL = f"https://api.github.com/repos/{REPO}/releases"
PAGE2 = "https://api.github.com/repositories/1000/releases?per_page=100&page=2"
TOKEN = "ghp_NotARealToken0123456789abcdefghijkl"
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def example(name: str):
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"contract example {path} not found (shared/contracts is absent)")
    return json.loads(path.read_text())


def releases_body():
    """The two real release bodies, plus a draft and a prerelease derived from them."""
    real = example("release.by_tag.pygithub_replay_2020.json")
    fixture = example("release.by_tag.octokit_fixture.json")
    draft = {**copy.deepcopy(real), "id": 3, "tag_name": "v2.0-draft", "draft": True, "published_at": None}
    pre = {**copy.deepcopy(real), "id": 2, "tag_name": "v1.1rc1", "prerelease": True,
           "published_at": "2020-07-20T10:00:00Z", "html_url": "https://github.com/o/r/releases/tag/v1.1rc1"}
    return [draft, pre, real, fixture]


def real_headers():
    """Real 2020 response headers (weak ETag, x-ratelimit-*), transport-level ones dropped."""
    h = example("release.by_tag.pygithub_replay_2020.headers.json")["headers"]
    return {k: v for k, v in h.items() if k.lower() not in ("content-encoding", "transfer-encoding", "status")}


class Clock:
    def __init__(self, t: datetime = T0):
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def rsps():
    with responses.RequestsMock() as mock:
        yield mock


def make_feed(clock, token=None, **kw):
    client = GitHubReleasesClient(requests.Session(), token, clock=clock, sleep=lambda s: None)
    return GitHubReleasesFeed(client, repos=(REPO,), clock=clock, poll_interval_s=600, **kw)


# --------------------------------------------------------------------------- happy path
def test_releases_become_events_drafts_skipped_prereleases_flagged(clock, rsps):
    rsps.get(URL, json=releases_body(), headers=real_headers(),
             match=[matchers.query_param_matcher({"per_page": "100"}),
                    matchers.header_matcher({"Accept": "application/vnd.github+json",
                                             "X-GitHub-Api-Version": "2022-11-28"})])
    feed = make_feed(clock)
    events = feed.events(T0)
    assert [e.payload["tag"] for e in events] == ["v1.0.0", "v1.0", "v1.1rc1"]   # in published order
    real = events[1]
    assert (real.kind, real.subject, real.source) == ("sdk_release", REPO, "github")
    assert real.happened_at == datetime(2020, 7, 14, 0, 58, 20, tzinfo=UTC)      # published_at, not created_at
    assert real.known_at == T0                                                   # max(published, poll time)
    assert real.payload == {"source": "github", "id": 28524234, "tag": "v1.0", "name": "Test", "prerelease": False,
                            "html_url": "https://github.com/rickrickston123/RepoTest/releases/tag/v1.0",
                            "created_at": "2020-07-12T07:34:42Z"}
    assert events[2].payload["prerelease"] is True
    assert "Authorization" not in rsps.calls[0].request.headers   # no token: none sent
    assert feed.health(T0)[0]


def test_default_repos():
    assert DEFAULT_REPOS == ("anthropics/anthropic-sdk-python", "openai/openai-python")


def test_known_at_is_published_at_when_our_clock_is_behind(clock, rsps):
    rsps.get(URL, json=[example("release.by_tag.octokit_fixture.json")])
    clock.t = datetime(2017, 10, 10, 15, 0, tzinfo=UTC)   # an hour before published_at (clock skew)
    e = make_feed(clock).events(datetime(2017, 10, 10, 16, 0, tzinfo=UTC))[0]
    assert e.known_at == e.happened_at == datetime(2017, 10, 10, 16, 0, tzinfo=UTC)


def test_pagination_follows_link_verbatim(clock, rsps):
    page1, page2 = releases_body()[:2], releases_body()[2:]
    links = example("headers.link_pagination.octokit_fixture.json")
    assert "/repositories/1000/" in links[0]["link"]   # the real switch of path the client must follow
    link = f'<{PAGE2}>; rel="next", <https://api.github.com/repositories/1000/releases?per_page=100&page=2>; rel="last"'
    rsps.get(URL, json=page1, headers={"Link": link, "ETag": 'W/"p1"'})
    rsps.get(PAGE2, json=page2, match=[matchers.query_param_matcher({"per_page": "100", "page": "2"})])
    events = make_feed(clock).events(T0)
    assert [e.payload["tag"] for e in events] == ["v1.0.0", "v1.0", "v1.1rc1"]
    assert rsps.calls[1].request.url == PAGE2


# --------------------------------------------------------------------------- ETag / 304
def test_second_poll_sends_if_none_match_and_304_changes_nothing(clock, rsps):
    headers = real_headers()
    etag = headers["ETag"]
    assert etag.startswith('W/"')
    rsps.get(URL, json=releases_body(), headers=headers)
    feed = make_feed(clock, token=TOKEN)
    first = feed.events(T0)
    conditional = example("conditional.304.pygithub_replay_2013.json")
    rsps.replace(responses.GET, URL, status=304, body=conditional["body"],
                 headers={"ETag": etag, "x-ratelimit-remaining": conditional["headers"]["x-ratelimit-remaining"]},
                 match=[matchers.header_matcher({"If-None-Match": etag})])   # sent verbatim, W/ included
    clock.t = T0 + timedelta(minutes=9)
    assert feed.events(clock.t) == first and len(rsps.calls) == 1   # not due yet: nothing sent
    clock.t = T0 + timedelta(minutes=11)
    assert feed.events(clock.t) == first                            # 304: no new events, known_at unchanged
    assert len(rsps.calls) == 2 and feed.not_modified == 1
    assert rsps.calls[1].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert feed.health(clock.t)[0]


# --------------------------------------------------------------------------- rate limits
def test_primary_rate_limit_skips_until_reset(clock, rsps, caplog):
    reset = T0 + timedelta(minutes=30)
    rsps.get(URL, status=403, json=example("error.403.primary_rate_limit.json"),
             headers={"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0",
                      "x-ratelimit-reset": str(int(reset.timestamp()))})
    feed = make_feed(clock, backoff_s=60)
    with caplog.at_level(logging.WARNING):
        assert feed.events(T0) == []
    ok, message = feed.health(T0)
    assert not ok and "primary rate limit" in message and "2024-06-01T12:30:01+00:00" in message
    for minutes in (1, 10, 29):   # past the feed's own back-off, but GitHub said to wait for the reset
        clock.t = T0 + timedelta(minutes=minutes)
        feed.events(clock.t)
    assert len(rsps.calls) == 1
    rsps.replace(responses.GET, URL, json=releases_body())
    clock.t = reset + timedelta(seconds=2)
    assert len(feed.events(clock.t)) == 3 and feed.health(clock.t)[0]
    assert "skipping polls until 2024-06-01T12:30:01+00:00" in caplog.text


def test_older_unauth_primary_body_is_recognised_by_headers(clock, rsps):
    headers = example("error.403.primary_rate_limit.unauth_2013.headers.json")["headers"]
    rsps.get(URL, status=403, json=example("error.403.primary_rate_limit.unauth_2013.json"),
             headers={"x-ratelimit-remaining": headers["x-ratelimit-remaining"]})   # no reset header
    client = GitHubReleasesClient(requests.Session(), clock=clock)
    with pytest.raises(RateLimited, match="primary rate limit") as info:
        client.releases(REPO)
    assert info.value.until == T0 + timedelta(seconds=60)
    with pytest.raises(RateLimited, match="not sent"):   # refused locally while blocked
        client.releases(REPO)
    assert len(rsps.calls) == 1


@pytest.mark.parametrize("status", [403, 429])
def test_secondary_rate_limit_obeys_retry_after(clock, rsps, status):
    rsps.get(URL, status=status, headers={"retry-after": "120"},
             json=example("error.403.secondary_rate_limit.constructed_from_documented_schema.json"))
    feed = make_feed(clock, backoff_s=10)
    feed.events(T0)
    ok, message = feed.health(T0)
    assert not ok and "secondary rate limit" in message and "2024-06-01T12:02:00+00:00" in message
    clock.t = T0 + timedelta(seconds=119)
    feed.events(clock.t)
    assert len(rsps.calls) == 1


def test_secondary_message_without_retry_after_waits_a_minute_then_longer(clock, rsps):
    rsps.get(URL, status=403, json=example("error.403.secondary_rate_limit.constructed_from_documented_schema.json"))
    client = GitHubReleasesClient(requests.Session(), clock=clock)
    with pytest.raises(RateLimited) as first:
        client.releases(REPO)
    assert first.value.until == T0 + timedelta(seconds=60)
    clock.t = T0 + timedelta(seconds=61)
    with pytest.raises(RateLimited) as second:
        client.releases(REPO)
    assert second.value.until == clock.t + timedelta(seconds=120)


def test_last_request_of_the_hour_blocks_before_a_403(clock, rsps):
    reset = T0 + timedelta(minutes=5)
    rsps.get(URL, json=releases_body(), headers={"x-ratelimit-remaining": "0",
                                                 "x-ratelimit-reset": str(int(reset.timestamp()))})
    client = GitHubReleasesClient(requests.Session(), clock=clock)
    assert len(client.releases(REPO)) == 4
    with pytest.raises(RateLimited, match="used up"):
        client.releases(REPO)
    assert len(rsps.calls) == 1


def test_403_without_limit_signals_is_a_permission_error(clock, rsps):
    rsps.get(URL, status=403, json={"message": "Resource not accessible by integration"})
    with pytest.raises(AuthError, match="permission"):
        GitHubReleasesClient(requests.Session(), clock=clock).releases(REPO)


# --------------------------------------------------------------------------- secrets
def test_token_never_in_logs_or_errors(clock, rsps, caplog):
    rsps.get(URL, body=requests.ConnectionError(f"boom while sending Authorization: Bearer {TOKEN}"))
    rsps.get(f"https://api.github.com/repos/openai/openai-python/releases", status=401,
             json={"message": f"Bad credentials {TOKEN}"})
    client = GitHubReleasesClient(requests.Session(), TOKEN, clock=clock, sleep=lambda s: None)
    feed = GitHubReleasesFeed(client, clock=clock)
    with caplog.at_level(logging.DEBUG):
        assert feed.events(T0) == []
    ok, message = feed.health(T0)
    assert not ok and TOKEN not in message
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert TOKEN not in repr(client)
    with pytest.raises(AuthError) as info:
        client.releases("openai/openai-python")
    assert TOKEN not in str(info.value)
