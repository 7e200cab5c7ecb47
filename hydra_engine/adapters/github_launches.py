"""AI model launches, live: GitHub releases of the model vendors' SDKs turned into ``ai_model_launch``
events, merged with the shipped curated list (issue #19, strategy 4).

A vendor adds a new model's id to its SDK the day the model launches ("add new claude-3-5-sonnet-20240620
model", "add o1 models", "adding gpt-4.1 family of model IDs"), so a release whose notes carry such a line
is the machine-readable trace of a launch. :func:`launch_lines` is the stated rule: a line of the release
notes is a launch line when it **adds / releases / supports** something **and** names a model id
(``claude-…``, ``gpt-…``, ``o1``/``o3``/``o4…``, ``gemini-…``) or the words "new model" / "models";
a line naming only the word "model" is not when it is about parameters, enums, helpers or types
(``add enum to model param`` is not a launch), and fixes, removals and deprecations never are. One launch event per release (its first launch line names it): ``subject`` =
``<repo>:<model id>`` (or the tag), ``happened_at`` = ``published_at``, ``known_at`` = max(published_at,
first poll that saw it) -- the releases client's rule, so a live session never sees a launch before it
polled it.

Repositories: ``HYDRA_AI_LAUNCH_REPOS`` (comma-separated ``owner/name``; default the two SDKs);
``GITHUB_TOKEN`` optional (60 requests/hour without one: the client's ETag polling costs one request per
repository per poll when nothing changed; rate limits as in ``github_releases``).
"""
from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from hydra_engine.events import Event, visible

from .github_releases import DEFAULT_REPOS, GitHubReleasesClient, GitHubReleasesFeed, _is_draft, release_event
from .http import utc_now

KIND = "ai_model_launch"
_VERB = re.compile(r"\b(add|adds|added|adding|release|releases|releasing|support|supports|introduc\w*|new)\b", re.I)
_MODEL_ID = re.compile(r"\b(claude-[a-z0-9.\-]*[a-z0-9]|claude (?:opus|sonnet|haiku|mythos) \d+(?:\.\d+)?|"
                       r"gpt-[a-z0-9.\-]*[a-z0-9]|o[134](?:-(?:mini|pro|preview))?|gemini-[a-z0-9.\-]*[a-z0-9])\b", re.I)
_MODEL_WORD = re.compile(r"\bnew (?:\w+ )?models?\b|\bmodels?\b(?! param)", re.I)
_NOT_LAUNCH = re.compile(r"\b(fix|fixes|fixed|deprecat\w*|remove\w*|docs?)\b", re.I)
_NOT_MODEL_LAUNCH = re.compile(r"\b(param|params|parameter|enum|helper|helpers|to_dict|to_json|types?|args?|distillation)\b", re.I)


def launch_lines(notes: str) -> list[str]:
    """The lines of release notes that announce a model (the rule in the module docstring)."""
    out = []
    for raw in (notes or "").splitlines():
        line = raw.strip().lstrip("*-• ").strip()
        if not line or not _VERB.search(line) or _NOT_LAUNCH.search(line):
            continue
        # an explicit model id is a launch; the bare word "model(s)" only without API-plumbing words
        if _MODEL_ID.search(line) or (_MODEL_WORD.search(line) and not _NOT_MODEL_LAUNCH.search(line)):
            out.append(line)
    return out


def model_id(line: str) -> str | None:
    m = _MODEL_ID.search(line)
    return m.group(1).lower().replace(" ", "-") if m else None


def launch_from_release(repo: str, row: dict, index: int, poll_time: datetime) -> Event | None:
    """The launch a published release announces, or None (drafts and releases without a launch line)."""
    if _is_draft(row):
        return None
    lines = launch_lines(str(row.get("body") or "")) or launch_lines(str(row.get("name") or ""))
    if not lines:
        return None
    release = release_event(repo, row, index, poll_time)   # validates the row; its times are the rule
    model = model_id(lines[0]) or str(row["tag_name"])
    return Event(KIND, f"{repo}:{model}", release.happened_at, release.known_at, {
        "model": model, "launch_line": lines[0], "repo": repo, "tag": row["tag_name"], "id": row["id"],
        "html_url": row["html_url"], "source": "github"}, source="github")


class GitHubLaunchFeed(GitHubReleasesFeed):
    """Live ``ai_model_launch`` events from SDK releases (``kinds`` = ``ai_model_launch``)."""

    name = "github_launches"
    kinds = (KIND,)

    def _events_from(self, repo: str, rows: list, poll_time: datetime) -> list[Event]:
        out = []
        for i, row in enumerate(rows):
            e = launch_from_release(repo, row, i, poll_time) if isinstance(row, dict) else None
            if e is not None:
                out.append(e)
        return out


class LaunchFeed:
    """The curated list plus a live feed (either may be absent): one ``ai_model_launch`` feed."""

    name = "ai_model_launches"
    kinds = (KIND,)

    def __init__(self, curated: Sequence[Event], live: GitHubLaunchFeed | None = None):
        self.curated = tuple(curated)
        self.live = live

    def events(self, now: datetime) -> list[Event]:
        live = list(self.live.events(now)) if self.live is not None else []
        return visible([*self.curated, *live], now)

    def health(self, now: datetime) -> tuple[bool, str]:
        if self.live is None:
            return True, f"{len(self.curated)} curated launches"
        ok, why = self.live.health(now)
        return ok, f"{len(self.curated)} curated launches; {why}"


def repos_from_env(env: dict | None = None) -> tuple[str, ...]:
    raw = (env if env is not None else os.environ).get("HYDRA_AI_LAUNCH_REPOS", "")
    repos = tuple(r.strip() for r in raw.split(",") if r.strip())
    return repos or DEFAULT_REPOS


def live_launch_feed(data_dir: Path, *, clock: Callable[[], datetime] = utc_now, session=None) -> LaunchFeed:
    """What a paper session builds for ``ai_model_launch``: the curated list and the GitHub poller."""
    from hydra_engine.data.ai_launch_list import launch_list_path, read_launch_list
    token = os.environ.get("GITHUB_TOKEN") or None
    client = GitHubReleasesClient(session, token, clock=clock)
    live = GitHubLaunchFeed(client, repos=repos_from_env(), clock=clock, poll_interval_s=600.0)
    return LaunchFeed(read_launch_list(launch_list_path(data_dir)), live)
