"""The store's cycle rows as one executemany (issue #24) equal the ORM rows they replaced, on real data.

The shipped configuration (every plugin, perps, the HMM) replays three weeks of January 2024 from
/work/shared/data (orders, fills and closed trades) twice -- once through ``Store.save_cycle`` /
``Store.flush`` as they were (a ``CycleRow`` object per cycle, ``add_all`` at the commit) and once as
they are -- and every row of every table (ids included) must be the same.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import inspect, text
from sqlmodel import Session

from hydra_engine import store as store_mod
from hydra_engine.store import CycleRow, Store, _add_fills_trades_state


def _save_cycle_replaced(self, session_id, report, orders, fills, trades, state, *, force=False, batch=1):
    regime = (report.get("regime") or {}).get("regime")
    self._pending_cycles.append(CycleRow(session_id=session_id, cycle=report["cycle"], ts=report["ts"],
                                         mode=report.get("mode", ""), regime=regime,
                                         equity_usd=report.get("equity_usd", "0"),
                                         n_orders=len(orders), n_errors=len(report.get("errors", []))))
    if not (orders or fills or trades or force or len(self._pending_cycles) >= batch):
        return
    with Session(self.engine) as s:
        s.add_all(self._pending_cycles)
        for o in orders:
            s.merge(store_mod.OrderRow(**{"session_id": session_id, **{
                k: ("" if v is None and k == "reject_reason" else v) for k, v in o.items()
                if k in store_mod.OrderRow.model_fields}}))
        _add_fills_trades_state(s, session_id, fills, trades, state, report["ts"])
        s.commit()
    self._pending_cycles = []


def _flush_replaced(self):
    if self._pending_cycles:
        with Session(self.engine) as s:
            s.add_all(self._pending_cycles)
            s.commit()
        self._pending_cycles = []


def _run(shared_data, out: Path) -> dict:
    from hydra_engine.app import build_sim_session, run_session
    from hydra_engine.backtest import _defer_snapshots, backtest_settings
    from hydra_engine.config import load_settings
    s = backtest_settings(load_settings(Path(__file__).resolve().parents[1] / "hydra.toml"), shared_data,
                          date(2024, 1, 1), date(2024, 1, 22), out)
    session = build_sim_session(s, mode="backtest", data_dir=shared_data, log_dir=out)
    _defer_snapshots(session.session_log)
    summary = run_session(session, progress=False)
    store = session.engine.store
    store.flush()
    tables = {}
    with store.engine.connect() as conn:
        for name in inspect(store.engine).get_table_names():
            rows = conn.execute(text(f'SELECT * FROM "{name}" ORDER BY 1')).fetchall()
            tables[name] = [tuple("<wall clock>" if name == "engine_state" and i == 2   # updated_at at close
                                  else v.replace(str(out), "<out>") if isinstance(v, str) else v
                                  for i, v in enumerate(r))
                            for r in rows]   # the run's own folder (model files) named alike
    return {"tables": tables, "trades": summary["closed_trades"], "orders": summary["orders"],
            "equity": summary["final_equity_usd"]}


def test_cycle_rows_equal_the_orm_rows_on_a_real_shipped_run(shared_data, tmp_path, monkeypatch):
    new = _run(shared_data, tmp_path / "new")
    monkeypatch.setattr(Store, "save_cycle", _save_cycle_replaced)
    monkeypatch.setattr(Store, "flush", _flush_replaced)
    old = _run(shared_data, tmp_path / "old")
    assert new["trades"] > 0 and new["orders"] > 0
    assert len(new["tables"]["cycles"]) > 400 and new["tables"]["orders"] and new["tables"]["fills"]
    assert new["tables"] == old["tables"]
    assert (new["trades"], new["orders"], new["equity"]) == (old["trades"], old["orders"], old["equity"])
