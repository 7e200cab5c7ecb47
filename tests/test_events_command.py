"""``hydra events`` (issue #18): list events, add an operator CME margin notice, refuse a malformed one."""
from __future__ import annotations

import shutil

from hydra_engine.cli import main
from hydra_engine.data.event_feeds import OPERATOR_MARGINS_FILE, cme_margins_feed

from .conftest import SHIPPED_DATA


def _data(tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(SHIPPED_DATA / "events", folder / "events")
    return folder


def test_list_prints_the_2011_silver_hikes(tmp_path, capsys):
    folder = _data(tmp_path)
    assert main(["events", "list", "--kind", "cme_margin", "--since", "2011-04-01", "--until", "2011-06-01",
                 "--data", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all("SI" in line and "hike" in line for line in out)


def test_add_margin_is_validated_then_served_by_the_feed(tmp_path, capsys):
    folder = _data(tmp_path)
    before = len(cme_margins_feed(folder))
    assert main(["events", "add-margin", "--metal", "SI", "--effective", "2026-03-02", "--initial", "33000",
                 "--maintenance", "30000", "--pct-change", "10", "--source", "https://www.cmegroup.com/notices/x.html",
                 "--source-date", "2026-02-27", "--data", str(folder)]) == 0
    feed = cme_margins_feed(folder)
    assert len(feed) == before + 1
    e = next(e for e in feed.all_events if e.happened_at.date().isoformat() == "2026-03-02" and e.subject == "SI")
    assert e.payload["direction"] == "hike" and e.payload["pct_change"] == 10.0
    assert "added: SI margin hike" in capsys.readouterr().out


def test_a_malformed_notice_is_refused_naming_the_field_and_nothing_is_written(tmp_path, capsys):
    folder = _data(tmp_path)
    cases = [(["--metal", "PL"], "'metal'"), (["--effective", "2026-02-30"], "'effective'"),
             (["--pct-change", "ten"], "'pct-change'"), (["--source", "cme notice"], "'source'"),
             (["--initial", "-5"], "'initial'"), (["--source-date", "2026-03-09"], "'source-date'")]
    base = {"--metal": "GC", "--effective": "2026-03-02", "--pct-change": "8", "--initial": "30000",
            "--source": "https://www.cmegroup.com/n.html", "--source-date": "2026-02-27"}
    for change, field in cases:
        args = dict(base)
        args[change[0]] = change[1]
        argv = ["events", "add-margin", "--data", str(folder)] + [x for kv in args.items() for x in kv]
        assert main(argv) == 3, change
        err = capsys.readouterr().err
        assert "notice refused" in err and field in err, (change, err)
    assert not (folder / OPERATOR_MARGINS_FILE).exists()


# --------------------------------------------------------------------------- ai-launch add (issue #19)
def _launch_args(folder, **change):
    base = {"--id": "claude-4", "--model": "Claude 4", "--organization": "Anthropic", "--announced": "2024-12-17",
            "--source": "https://www.anthropic.com/news/x", "--source-ref": "press release"}
    base.update(change)
    return ["events", "ai-launch", "add", "--data", str(folder)] + [x for kv in base.items() for x in kv]


def test_ai_launch_add_derives_the_first_session_and_the_feed_serves_it(tmp_path, capsys):
    from hydra_engine.data.ai_launch_list import CURATED_LAUNCHES_FILE, read_launch_list
    folder = _data(tmp_path)
    shutil.copytree(SHIPPED_DATA / "equities" / "daily", folder / "equities" / "daily")   # SPY's sessions
    before = read_launch_list(folder / CURATED_LAUNCHES_FILE)
    # a Friday-evening launch (Pacific): its first session is the Monday after
    assert main(_launch_args(folder, **{"--id": "friday-model", "--announced": "2024-12-20"})) == 0
    out = capsys.readouterr().out
    assert "first US session 2024-12-23" in out, out
    after = {e.subject: e for e in read_launch_list(folder / CURATED_LAUNCHES_FILE)}
    assert len(after) == len(before) + 1 and after["friday-model"].payload["first_us_session"] == "2024-12-23"
    # an explicit time (an SDK tag before the close) reacts the same day
    assert main(_launch_args(folder, **{"--id": "noon-model", "--announced": "2024-12-18",
                                        "--announced-at": "2024-12-18T12:00:00-05:00"})) == 0
    assert "first US session 2024-12-18" in capsys.readouterr().out
    # the feed the plugin reads sees the new launches
    from hydra_engine.data.event_feeds import build_event_feeds
    from hydra_engine.strategy import DataNeed
    from datetime import datetime, timezone
    [feed] = build_event_feeds([DataNeed("events", "ai_model_launch")], folder)
    subjects = {e.subject for e in feed.events(datetime(2024, 12, 31, tzinfo=timezone.utc))}
    assert {"friday-model", "noon-model"} <= subjects


def test_ai_launch_add_refuses_a_bad_field_naming_it_and_writes_nothing(tmp_path, capsys):
    from hydra_engine.data.ai_launch_list import CURATED_LAUNCHES_FILE
    folder = _data(tmp_path)
    path = folder / CURATED_LAUNCHES_FILE
    original = path.read_bytes()
    cases = [({"--id": "Claude 4", "--first-session": "2024-12-18"}, "field 'launch_id'", "--id"),
             ({"--id": "claude-3", "--first-session": "2024-12-18"}, "duplicate of line", "--id"),
             ({"--announced": "2024-13-01", "--first-session": "2024-12-18"}, "field 'announced_date'", "--announced"),
             ({"--first-session": "2024-12-16"}, "closes before the launch was public", "--first-session"),
             ({"--first-session": "2024-12-21"}, "weekend day", "--first-session"),
             ({"--announced-at": "2024-12-17T10:00:00", "--first-session": "2024-12-18"}, "needs its UTC offset",
              "--announced-at"),
             ({"--model": " ", "--first-session": "2024-12-18"}, "field 'model': must not be empty", "--model"),
             # no SPY sessions in this folder and none given: the operator must say which session
             ({"--announced": "2024-12-17"}, "field 'first-session': required", None)]
    for change, why, option in cases:
        assert main(_launch_args(folder, **change)) == 3, change
        err = capsys.readouterr().err
        assert "launch refused" in err and why in err, (change, err)
        if option:
            assert f"({option})" in err, (change, err)
    assert path.read_bytes() == original
    # a folder without its own list is not given one by a refused launch
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(_launch_args(bare, **{"--id": "BAD"})) == 3
    assert not (bare / CURATED_LAUNCHES_FILE).exists()
