"""The engine's state across restarts and its side of the book: what a restart restores (risk and kill
state, weights, aggregator reliabilities, the book, the order sequence, the refitted regime model), what
each committed cycle persists, and the :class:`~hydra_engine.book.BookListener` callbacks through which a
booked fill reaches the risk layer and the aggregator. Mixed into :class:`~hydra_engine.engine.Engine`, so
``engine.py`` keeps only the cycle."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from .domain import ClosedTrade, Fill


class EngineState:
    # ================================================================== book listener
    def on_entry_filled(self, known_at: datetime) -> None:
        self.risk.on_entry_filled(known_at)

    def on_trade_closed(self, trade: ClosedTrade, known_at: datetime) -> None:
        self.risk.on_trade_closed(trade, known_at)

    def on_source_outcome(self, source: str, hit: bool) -> None:
        self.aggregator.record_outcome(source, hit)

    def apply_fill(self, fill: Fill, report: dict | None = None) -> dict | None:
        """Book a fill outside a cycle (paper start-up recovery); returns the closed trade if one closed."""
        return self.book.apply_fill(fill, report)

    def dust_below(self, symbol: str) -> Decimal:
        return self.book.dust_below(symbol)

    # ================================================================== persistence
    def _persist(self, report: dict, trades: list[dict], now: datetime) -> None:
        if self.session_log:
            self.session_log.record_cycle(report, trades)
        if self.store:
            # every committed cycle carries the state when cycles commit one by one (paper/live): peak
            # equity, the day's base and the trailing stops' high-water marks move in quiet cycles too,
            # and a hard kill must not bring back older ones. Batched replays save it with their orders.
            keep = self.store_batch == 1 or report["orders"] or report["fills"] or "regime_refit" in report
            self.store.save_cycle(self.session_id, report, report["orders"], report["fills"], trades,
                                  {self.state_key: self.state()} if keep else None, batch=self.store_batch)

    def state(self) -> dict:
        """Everything needed to resume after a restart."""
        return {"engine": {"cycle": self.cycle, "order_seq": self.executor.order_seq, "session_id": self.session_id},
                "risk": self.risk.to_state(), "weights": self.weights.to_state(),
                "aggregator": self.aggregator.to_state(), **self.book.to_state(),
                **({"regime_refit": self.regime_refitter.to_state()} if self.regime_refitter else {}),
                **({"sections": {k: v.to_state() for k, v in sections.items()}}
                   if (sections := getattr(self, "state_sections", None)) else {})}

    @property
    def state_key(self) -> str:
        """Each mode keeps its own resumable state (the sim's account is not the paper account)."""
        return f"engine:{self.mode}"

    def restore(self, state: dict) -> None:
        """Resume from :meth:`state` after a restart: risk and kill state, weights, the book."""
        self.risk.load_state(state.get("risk", {}))
        self.weights.load_state(state.get("weights", {}))
        if state.get("aggregator"):
            self.aggregator.load_state(state["aggregator"])
        self.book.load_state(state)
        # continue the order sequence: a restart within the same second gets the same session id, and a
        # restarted sequence would then reuse a client_order_id (Alpaca answers with the old order)
        self.executor.order_seq = max(self.executor.order_seq, int(state.get("engine", {}).get("order_seq", 0)))
        if self.regime_refitter is not None and state.get("regime_refit"):
            refitted = self.regime_refitter.load_state(state["regime_refit"])
            if refitted is not None:   # resume on the model the last refit produced
                self.regime_detector = refitted
        for name, section in getattr(self, "state_sections", {}).items():   # e.g. the ML retrainers (#21)
            if state.get("sections", {}).get(name):
                section.load_state(state["sections"][name])
