"""GitHub releases of SDK repositories as ``sdk_release`` events (issue #19).

Contract: shared/contracts/NOTES-2.md section 3. What this module decides, and why:

* **Budget.** Without a token GitHub allows 60 requests/hour per IP, shared with everything else on
  the host, so the default poll is every 10 minutes and each repository costs one request when nothing
  changed. Conditional requests (``If-None-Match`` with the stored ETag, verbatim, ``W/`` included)
  answer 304 with no body; with a token a 304 is free. The ETag is stored only once all pages of a
  listing were read, so a failure half-way can never turn into a 304 that hides the missing pages.
* **Rate limits.** Every response's ``x-ratelimit-*`` headers are read. A 403/429 is decided in the
  documented order: primary (``x-ratelimit-remaining: 0``: nothing before ``x-ratelimit-reset``), then
  secondary (``retry-after`` seconds, or a secondary-limit message: 60 s, doubling while it repeats),
  and only then a permission error. While blocked the client refuses locally, sending nothing; the feed
  skips its polls until then and says so in ``health`` -- it never sleeps an hour inside ``events()``.
  A 200 that leaves ``remaining`` at 0 blocks the same way, before GitHub has to refuse us.
* **Pagination.** ``Link: rel="next"`` is followed verbatim (it may switch to ``/repositories/{id}``);
  paging stops at a page holding a release already seen, or after ``max_pages``.
* **Times.** ``published_at`` is when a release was announced (``created_at`` is the commit's date).
  ``happened_at = published_at``; ``known_at = max(published_at, first poll that saw it)``.
* Drafts (no ``published_at``; only visible with push access) are skipped; prereleases are flagged.
  Turning an SDK release into a model launch is a later step and is not guessed here.
"""
from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any, Callable

import requests

from hydra_engine.domain import UTC
from hydra_engine.events import Event

from .http import (AdapterError, AuthError, DataError, PollingFeed, RateLimited, RequestError, get_with_retries,
                   json_body, parse_utc, redact, utc_now)

log = logging.getLogger(__name__)

API_URL = "https://api.github.com"
DEFAULT_REPOS = ("anthropics/anthropic-sdk-python", "openai/openai-python")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
# PyGithub's isSecondaryRateLimitError matches these (NOTES-2 3.3); the wording has changed over the years
_SECONDARY = ("secondary rate limit", "abuse detection", "temporarily blocked")


class GitHubReleasesClient:
    """``GET /repos/{owner}/{repo}/releases`` with ETags, Link pagination and both rate limits respected."""

    def __init__(self, session: requests.Session | None = None, token: str | None = None, *,
                 base_url: str = API_URL, per_page: int = 100, max_pages: int = 5, max_retries: int = 2,
                 backoff_s: float = 1.0, secondary_wait_s: float = 60.0, clock: Callable[[], datetime] = utc_now,
                 sleep: Callable[[float], None] = time.sleep):
        if not 1 <= per_page <= 100:
            raise ValueError(f"per_page must be in [1, 100], got {per_page!r}")
        self.session = session or requests.Session()
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.per_page, self.max_pages = per_page, max_pages
        self.max_retries, self.backoff_s, self.secondary_wait_s = max_retries, backoff_s, secondary_wait_s
        self._clock, self._sleep = clock, sleep
        self.etags: dict[str, str] = {}          # per repo; ETags are per token (github/docs#34689)
        self.blocked_until: datetime | None = None
        self.block_reason = ""
        self.remaining: int | None = None        # last x-ratelimit-remaining seen
        self._secondary_hits = 0

    def __repr__(self) -> str:
        return f"GitHubReleasesClient(base_url={self.base_url!r}, token={'set' if self._token else 'unset'})"

    def releases(self, repo: str, known_ids: frozenset[int] = frozenset()) -> list[dict] | None:
        """The repository's releases, newest first, or None when GitHub answered 304 (nothing changed)."""
        if not isinstance(repo, str) or not _REPO_RE.match(repo):
            raise ValueError(f"repo must look like 'owner/name', got {repo!r}")
        endpoint = f"repos/{repo}/releases"
        url, params = f"{self.base_url}/{endpoint}", {"per_page": self.per_page}
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                   "User-Agent": "hydra-engine"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        out: list[dict] = []
        etag = None
        for page in range(self.max_pages):
            self._check_blocked(endpoint)
            conditional = dict(headers)
            if page == 0 and repo in self.etags:
                conditional["If-None-Match"] = self.etags[repo]
            resp = get_with_retries(self.session, url, endpoint=endpoint, params=params, headers=conditional,
                                    max_retries=self.max_retries, backoff_s=self.backoff_s, sleep=self._sleep,
                                    secrets=(self._token,))
            self._note_rate(resp)
            if resp.status_code == 304 and page == 0:
                return None
            if resp.status_code != 200:
                raise self._error(resp, endpoint)
            self._secondary_hits = 0
            rows = json_body(resp, endpoint, (self._token,))
            if not isinstance(rows, list):
                raise DataError(endpoint, f"expected a JSON array, got {type(rows).__name__}", field="body")
            if page == 0:
                etag = resp.headers.get("ETag")
            out.extend(rows)
            url, params = resp.links.get("next", {}).get("url"), None   # verbatim: it carries its own query
            if not url or any(isinstance(r, dict) and r.get("id") in known_ids for r in rows):
                break
        if etag:
            self.etags[repo] = etag
        return out

    # ------------------------------------------------------------------ rate limits
    def _check_blocked(self, endpoint: str) -> None:
        if self.blocked_until is not None and self._clock() < self.blocked_until:
            raise RateLimited(endpoint, f"not sent, {self.block_reason}", until=self.blocked_until)

    def _block(self, until: datetime, reason: str) -> None:
        self.blocked_until = max(until, self.blocked_until or until)
        self.block_reason = reason

    def _note_rate(self, resp: requests.Response) -> None:
        remaining, reset = _int_header(resp, "x-ratelimit-remaining"), _int_header(resp, "x-ratelimit-reset")
        if remaining is not None:
            self.remaining = remaining
        if remaining == 0 and resp.status_code < 400:   # the last request of the hour: stop before a 403
            self._block(_reset_time(reset, self._clock()), "primary rate limit used up (x-ratelimit-remaining 0)")

    def _error(self, resp: requests.Response, endpoint: str) -> AdapterError:
        status, now = resp.status_code, self._clock()
        message = _message(resp, self._token)
        if status in (403, 429):
            if _int_header(resp, "x-ratelimit-remaining") == 0:
                until = _reset_time(_int_header(resp, "x-ratelimit-reset"), now)
                self._block(until, "primary rate limit")
                return RateLimited(endpoint, f"HTTP {status} primary rate limit: {message}", until)
            retry_after = _int_header(resp, "retry-after")
            if retry_after is not None or status == 429 or any(s in message.lower() for s in _SECONDARY):
                self._secondary_hits += 1
                wait = retry_after if retry_after is not None else \
                    self.secondary_wait_s * 2 ** (self._secondary_hits - 1)   # docs: "at least one minute", then longer
                until = now + timedelta(seconds=wait)
                self._block(until, "secondary rate limit")
                return RateLimited(endpoint, f"HTTP {status} secondary rate limit: {message}", until)
            return AuthError(endpoint, f"HTTP 403 (no rate-limit signal, so a permission error): {message}")
        if status == 401:
            return AuthError(endpoint, f"HTTP 401 (token rejected): {message}")
        if status == 404:
            return RequestError(endpoint, f"HTTP 404 (no such repository, or it is private): {message}")
        return RequestError(endpoint, f"HTTP {status}: {message}")


class GitHubReleasesFeed(PollingFeed):
    """Live ``sdk_release`` feed. Subject: the repository (``owner/name``). Payload: ``source``
    ("github"), ``id``, ``tag``, ``name``, ``prerelease``, ``html_url``, ``created_at`` (commit date)."""

    name = "github_releases"
    kinds = ("sdk_release",)

    def __init__(self, client: GitHubReleasesClient, *, repos: tuple[str, ...] = DEFAULT_REPOS,
                 poll_interval_s: float = 600.0, clock: Callable[[], datetime] = utc_now, **kwargs):
        super().__init__(poll_interval_s=poll_interval_s, clock=clock, secrets=(client._token,), **kwargs)
        self.client, self.repos = client, tuple(repos)
        self.not_modified = 0   # 304s seen: health and tests read it

    def _poll(self, poll_time: datetime) -> list[Event]:
        first_error: Exception | None = None
        for repo in self.repos:
            known = frozenset(e.payload["id"] for e in self._events.values() if e.subject == repo)
            try:
                rows = self.client.releases(repo, known)
                if rows is None:
                    self.not_modified += 1
                    continue
                events = self._events_from(repo, rows, poll_time)
            except RateLimited:
                raise   # the budget is shared by every repository: stop this poll now
            except AdapterError as exc:   # one bad repository must not starve the others
                self.client.etags.pop(repo, None)   # a body we could not use must not be answered by a 304
                first_error = first_error or exc
                continue
            # merged per repository, so what one repository brought survives a later one's failure
            super()._merge(events, poll_time)
        if first_error is not None:
            raise first_error
        return []

    def _key(self, event: Event) -> tuple:
        return (event.kind, event.subject, event.payload["id"])

    def _events_from(self, repo: str, rows: list, poll_time: datetime) -> list[Event]:
        """The events one listing yields (a subclass maps releases to other kinds: github_launches)."""
        return [release_event(repo, row, i, poll_time) for i, row in enumerate(rows) if not _is_draft(row)]


def release_event(repo: str, row: Any, index: int, poll_time: datetime) -> Event:
    """One published release as an Event (see the module docstring for the times)."""
    endpoint, where = f"repos/{repo}/releases", f"[{index}]"
    if not isinstance(row, dict):
        raise DataError(endpoint, f"{where}: expected a JSON object", field=where)
    for name in ("id", "tag_name", "html_url"):
        if row.get(name) in (None, ""):
            raise DataError(endpoint, f"{where}: missing field '{name}'", field=name)
    published = parse_utc(row.get("published_at"), endpoint, f"{where}.published_at")
    return Event(kind="sdk_release", subject=repo, happened_at=published, known_at=max(published, poll_time),
                 source="github",
                 payload={"source": "github", "id": row["id"], "tag": row["tag_name"], "name": row.get("name") or "",
                          "prerelease": bool(row.get("prerelease")), "html_url": row["html_url"],
                          "created_at": row.get("created_at")})


def _is_draft(row: Any) -> bool:
    return isinstance(row, dict) and (bool(row.get("draft")) or row.get("published_at") is None)


def _int_header(resp: requests.Response, name: str) -> int | None:
    try:
        return int(resp.headers.get(name, ""))
    except ValueError:
        return None


def _reset_time(reset_epoch_s: int | None, now: datetime) -> datetime:
    """``x-ratelimit-reset`` (UTC epoch seconds) plus 1 s; 60 s from now when absent or already past."""
    if reset_epoch_s is None:
        return now + timedelta(seconds=60)
    return max(datetime.fromtimestamp(reset_epoch_s, UTC) + timedelta(seconds=1), now + timedelta(seconds=1))


def _message(resp: requests.Response, token: str | None) -> str:
    try:
        body = resp.json()
        text = body.get("message", "") if isinstance(body, dict) else str(body)
    except ValueError:
        text = resp.text[:200]
    return redact(text, (token,))
