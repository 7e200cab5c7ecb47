"""The trained models (issue #21): the CatBoost signal scorer and the XGBoost perp regime classifier.

* :mod:`.features` — the one feature module: what the live cycle computes and what training computes
  are the same function calls on a :class:`~hydra_engine.ports.MarketSnapshot`.
* :mod:`.labels` — the labels (a signal's net return after costs over its holding period; the perp
  regime of the *next* window by the specification's rule).
* :mod:`.validation` — purged, embargoed time-series cross-validation, metrics, calibration, the cards.
* :mod:`.dataset` — the training data: a replay run of every enabled plugin, recording its signals.
* :mod:`.scorer_model` / :mod:`.regime_classifier` — the fitted models as the engine uses them.
* :mod:`.monitor` — rolling accuracy and calibration of live predictions against realised outcomes.

numpy only at import; catboost and xgboost are imported where a model is trained or loaded.
"""
