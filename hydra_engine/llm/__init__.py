"""The LLM news analyst (issue #22): a Claude call every ``llm.scan_interval_minutes`` that gives each
watched symbol a verdict, recorded for replay, and the entry-gate rule that applies it.

- :mod:`.schema`: the verdict's pydantic models, the tool schema derived from them, the causes of "no
  verdict", and the ``[llm]`` settings.
- :mod:`.analyst`: the call (forced tool, validated, every failure a cause), its caps and its cost.
- :mod:`.record`: every call and outcome in SQLite, and the replay source for backtests.
- :mod:`.gate_rule`: :class:`LlmNewsGate`, the gate rule; it reads a verdict book, never the network.
"""
