"""Perpetual futures (issue #20): Binance USD-M margin arithmetic, funding from the real history, and a
simulated perpetual-futures venue. See ``venue.py`` for the venue's rules."""
