"""The venue's own contract specs at a Binance USD-M adapter's start-up (issue #20): ``GET /fapi/v1/exchangeInfo``
(public) for tick, step, quantity limits, minimum notional and status, and the signed
``GET /fapi/v1/leverageBracket`` for the leverage brackets. The venue's values replace the shipped ones
(:mod:`hydra_engine.perp.specs`, ``perp/brackets.json``); every difference is returned as a note (the engine's
first cycle says them, and the start-up log), and a symbol the venue does not trade is refused with its reason.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from ..config import ConfigError
from ..perp.margin import load_brackets
from ..perp.specs import (
    bracket_differences,
    load_shipped_specs,
    venue_brackets,
    venue_specs,
)
from ..ports import BrokerError

log = logging.getLogger(__name__)


def read_venue_specs(broker) -> list[str]:
    """Fetch and apply the venue's specs to ``broker`` (``_assets``, ``brackets``, ``min_notional_usdt``,
    ``refused``); returns the notes. Raises :class:`ConfigError` when no configured symbol is tradable."""
    body = broker._get("/fapi/v1/exchangeInfo", {}, signed=False)
    specs, refused = venue_specs(body, broker.symbols)
    shipped = load_shipped_specs()
    notes = []
    for s, why in refused.items():
        notes.append(f"{s} refused: {why}")
    for s, spec in specs.items():
        ship = shipped.get(s)
        diff = ship.differences(spec) if ship is not None else ["no shipped spec"]
        if diff:
            notes.append(f"{s} exchangeInfo differs from the shipped specs ({ship.source if ship else '-'}): "
                         + "; ".join(diff) + " -- the venue's values are used")
        broker._assets[s] = replace(broker._assets[s], qty_increment=spec.step_size, price_increment=spec.tick_size,
                                    min_order_size=max(spec.min_qty, spec.step_size))
        broker.min_notional_usdt[s] = spec.min_notional_usdt
    broker.refused.update(refused)
    if not specs:
        raise ConfigError("none of perps.symbols can be traded at this Binance account: " + "; ".join(refused.values()))
    try:
        rows = broker._get("/fapi/v1/leverageBracket", {})
    except BrokerError as exc:
        notes.append(f"leverage brackets not read ({exc}); the shipped table (perp/brackets.json) is used")
        rows = []
    got = venue_brackets(rows, list(specs))
    ours = load_brackets()
    for s in specs:
        if s not in got:
            if rows:
                notes.append(f"{s}: no usable leverage bracket at the venue; the shipped table is used")
            continue
        broker.brackets[s] = got[s]
        diff = bracket_differences(ours[s], got[s]) if s in ours else ["no shipped table"]
        if diff:
            notes.append(f"{s} leverage brackets differ from the shipped table (perp/brackets.json): "
                         + "; ".join(diff[:3]) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")
                         + " -- the venue's are used")
    for n in notes:
        log.warning("Binance USD-M specs: %s", n)
    return notes
