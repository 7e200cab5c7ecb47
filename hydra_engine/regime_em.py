"""The EM restarts of :meth:`HMMRegimeDetector.fit <hydra_engine.regime.HMMRegimeDetector.fit>` (issue #24:
the regime refits inside a backtest).

:func:`fit_restart` is one restart exactly as ``fit`` ran it inline (hmmlearn's ``GaussianHMM`` from a
k-means++ start); :func:`fit_restarts` runs the restarts one after the other, or shared between this
process and forked ones when ``HYDRA_REGIME_FIT_WORKERS`` asks for more than one process, and returns
them in restart order, so the caller's pick (the first strictly best log-likelihood) is the serial loop's
pick, ties included. Each restart runs whole in one process: the same code on the same numbers gives the
same bits (tests/test_regime_fast.py compares every restart with the old inline loop).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np
from hmmlearn.hmm import GaussianHMM
from sklearn.cluster import kmeans_plusplus

_log = logging.getLogger(__name__)


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


WORKERS_ENV = "HYDRA_REGIME_FIT_WORKERS"


def fit_workers() -> int:
    """Processes the restarts of one fit run on (this one included): ``HYDRA_REGIME_FIT_WORKERS``, default 1
    (one after the other in this process). On the shared 2-core box the pool cost more wall time than it
    saved (bench/out/s11/wt-regime.md: the other core was busy); set it to 2 or more where cores are free."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{WORKERS_ENV}={raw!r}: expected a whole number of processes (1 = serial)") from None
    if n < 1:
        raise ValueError(f"{WORKERS_ENV}={raw!r}: expected 1 or more processes (1 = serial)")
    return n


def _can_fork() -> bool:
    """A pool of forked processes is only started from a single-threaded process on Linux: forking while
    another thread holds a lock (a retrain thread, the news analyst's) could leave a child stuck on it."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and threading.active_count() == 1)


def fit_restarts(xc: np.ndarray, n_states: int, n_iter: int, random_states: list[int],
                 workers: int | None = None) -> list[tuple]:
    """Every restart's (model, log-likelihood), in the order of ``random_states``.

    The restarts are independent (each draws from its own seed), so with ``workers`` > 1 (default
    :func:`fit_workers`, 1 unless configured; this process counts as one) they are shared between this
    process and ``workers - 1`` forked ones (:func:`_fit_shared`), each restart whole in one process: the
    same code on the same numbers, so the same bits, returned in restart order (the caller's pick among
    them is the serial loop's, ties included). One restart after the other in this process with one
    worker, when other threads are running (see :func:`_can_fork`), or when the pool cannot start or fails
    (then all of them are run here, from the first, so an error is raised as the serial loop raises it)."""
    workers = fit_workers() if workers is None else workers
    workers = min(workers, len(random_states))
    if workers > 1 and _can_fork():
        try:
            return _fit_shared(xc, n_states, n_iter, random_states, workers)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the serial loop gives the answer
            _log.warning("regime fit: the restarts in parallel failed (%r); running them one by one", exc)
    return [fit_restart(xc, n_states, n_iter, rs) for rs in random_states]


def _fit_shared(xc: np.ndarray, n_states: int, n_iter: int, random_states: list[int], workers: int) -> list[tuple]:
    """The restarts shared out: this process takes them from the first on, a pool of ``workers - 1``
    forked processes from the last back, until they meet. The pool lives for this one fit (nothing forked
    outlives it or keeps an old copy of the engine's memory). Each pool process has up to two restarts
    queued, so it does not wait for this process to hand it the next."""
    results: list = [None] * len(random_states)
    front, back = 0, len(random_states)
    queued: dict = {}                       # future -> restart index
    depth = 2 * (workers - 1)
    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=multiprocessing.get_context("fork")) as pool:
        while front < back or queued:
            while len(queued) < depth and front < back:
                back -= 1
                queued[pool.submit(fit_restart, xc, n_states, n_iter, random_states[back])] = back
            if front < back:
                results[front] = fit_restart(xc, n_states, n_iter, random_states[front])
                front += 1
            else:
                wait(queued, return_when=FIRST_COMPLETED)
            for future in [f for f in queued if f.done()]:
                results[queued.pop(future)] = future.result()
    return results


__all__ = ["fit_restart", "fit_restarts", "fit_workers"]
