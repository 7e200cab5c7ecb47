"""Which client order ids are HYDRA's own, and which of them a kill sent (issue #16).

Every order HYDRA sends carries a deterministic id from ``make_client_order_id``:
``<session>-<strategy>-<symbol>-<seq>``, the session being ``paper-…``/``live-…`` for the engine and
``kill-…`` for the `kill` command. Recognising these ids is what lets a restart replay HYDRA's own
history (an order a crashed process sent is still HYDRA's) and lets the engine book a kill's closing
fills with exit reason ``kill`` instead of ignoring them as foreign -- which left a phantom position.
"""
from __future__ import annotations

import re
from datetime import datetime

from .config import utc_stamp
from .domain import make_client_order_id

KILL_STRATEGY = "kill"
# the session part is `paper-`, `live-` or `kill-` and a UTC stamp to the millisecond (see build_paper_session)
_HYDRA_ID = re.compile(r"^(paper|live|kill)-\d{8}T\d{6,9}Z-(?P<strategy>.+)-(?P<symbol>[A-Za-z0-9_.]{1,16})-\d{6}$")
_KILL_ID = re.compile(r"^kill-\d{8}T\d{6,9}Z-kill-[A-Za-z0-9_.]{1,16}-\d{6}$")


def new_kill_id(now: datetime) -> str:
    """The id of one kill operation; its closing orders' ids derive from it (idempotent per symbol)."""
    return f"kill-{utc_stamp(now)[:-1]}{now.microsecond // 1000:03d}Z"


def kill_order_id(kill_id: str, symbol: str) -> str:
    """The client order id of ``kill_id``'s closing order for ``symbol``: the same kill retried never
    sends a second order for a symbol (Alpaca refuses a reused client_order_id)."""
    return make_client_order_id(kill_id, KILL_STRATEGY, symbol, 1)


def is_kill_order_id(coid: str | None) -> bool:
    return bool(coid) and _KILL_ID.match(coid) is not None


def is_hydra_order_id(coid: str | None) -> bool:
    """An id HYDRA made (any session's, or a kill's)."""
    return bool(coid) and _HYDRA_ID.match(coid) is not None


def strategy_of(coid: str | None) -> str | None:
    m = _HYDRA_ID.match(coid or "")
    return m.group("strategy") if m else None
