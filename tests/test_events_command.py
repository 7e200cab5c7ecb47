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
