"""`kill` and `resume`: the manual kill switch, shared with a running loop through the store."""
from __future__ import annotations

from ..config import load_settings
from . import config_option


def register(sub) -> None:
    k = sub.add_parser("kill", help="cancel all orders, close all positions (Alpaca, and the perp venue when [perps] is on) "
                            "and block entries until `resume`",
                       parents=[config_option()])
    k.add_argument("--reason", default="manual kill", help="recorded with the kill state")
    k.add_argument("--live", action="store_true",
                   help="flatten a live account (needs broker.paper = false and HYDRA_ENABLE_LIVE_TRADING too)")
    k.set_defaults(func=lambda args: _kill(args))
    r = sub.add_parser("resume", help="clear the kill state so entries are allowed again", parents=[config_option()])
    r.set_defaults(func=lambda args: _resume(args))


def _kill(args) -> int:
    from ..paper import kill
    return kill(load_settings(args.config), args.reason, live=args.live)


def _resume(args) -> int:
    from ..paper import resume
    return resume(load_settings(args.config))
