"""The EM restarts of :meth:`HMMRegimeDetector.fit <hydra_engine.regime.HMMRegimeDetector.fit>` (issue #24:
the regime refits inside a backtest).

:func:`fit_restart` is one restart exactly as ``fit`` ran it inline (hmmlearn's ``GaussianHMM`` from a
k-means++ start); :func:`fit_restarts` runs the restarts one after the other and returns them in order,
so the caller's pick (the first strictly best log-likelihood) is the old inline loop's, ties included
(tests/test_regime_fast.py compares every restart with that loop).
"""
from __future__ import annotations

import numpy as np
from hmmlearn.hmm import GaussianHMM
from sklearn.cluster import kmeans_plusplus



def fit_restart(xc: np.ndarray, n_states: int, n_iter: int, random_state: int):
    """One EM restart as :meth:`HMMRegimeDetector.fit` runs it: (model, log-likelihood), or (None, the
    error's text) for a degenerate restart."""
    # k-means++ seeding instead of hmmlearn's full k-means: as good a start for EM, and
    # cheap enough to afford many restarts (the best of several is what makes refits agree)
    m = GaussianHMM(n_states, covariance_type="diag", n_iter=n_iter, tol=1e-2, min_covar=1e-3,
                    implementation="scaling", init_params="st", random_state=random_state)
    m.means_ = kmeans_plusplus(xc, n_states, random_state=random_state)[0]
    m.covars_ = np.tile(xc.var(axis=0), (n_states, 1))
    try:
        m.fit(xc)
        ll = m.score(xc)
    except (ValueError, np.linalg.LinAlgError) as exc:  # degenerate restart: the caller tries the next one
        return None, str(exc)
    return m, ll


def fit_restarts(xc: np.ndarray, n_states: int, n_iter: int, random_states: list[int]) -> list[tuple]:
    """Every restart's (model, log-likelihood), in the order of ``random_states``, one after the other
    (sharing them with forked processes was measured on the 2-core box and dropped: no gain the run-to-run
    spread could resolve, bench/RESULTS.md section 19)."""
    return [fit_restart(xc, n_states, n_iter, rs) for rs in random_states]


__all__ = ["fit_restart", "fit_restarts"]
