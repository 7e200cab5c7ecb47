"""The EM restarts of :meth:`HMMRegimeDetector.fit <hydra_engine.regime.HMMRegimeDetector.fit>`, made cheaper
without changing a single bit of what they compute (issue #24: the regime refits inside a backtest).

* :func:`diag_log_density` is hmmlearn's diagonal Gaussian log-density
  (``hmmlearn.stats._log_multivariate_normal_density_diag``) with the same floating-point operations in the
  same order, laid out feature-major so that numpy runs long inner loops over the days instead of short
  strided ones. The order of the sum over the features is the one numpy's reduction uses for the input's
  layout (see the function). It was over half of the EM time (bench/out/s11/wt-regime.md); the tests prove
  equality against a verbatim copy of hmmlearn's function on real data and adversarial magnitudes.
* :class:`DiagGaussianHMM` is hmmlearn's ``GaussianHMM`` whose emission log-likelihood (the documented
  subclass hook ``_compute_log_likelihood``) is :func:`diag_log_density`; everything else (EM, the
  compiled forward/backward passes, the M-step, convergence) is hmmlearn's own.
* :func:`fit_restart` is one restart exactly as ``fit`` ran it inline; :func:`fit_restarts` runs the
  restarts one after the other, or shared between this process and forked ones when
  ``HYDRA_REGIME_FIT_WORKERS`` asks for more than one process, and returns them in restart order, so the
  caller's pick (the first strictly best log-likelihood) is the serial loop's pick.
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

from .exact_sums import row_sum

_log = logging.getLogger(__name__)


def _hmmlearn_diag_log_density(X, means, covars):
    """hmmlearn's own function (the fallback for the layouts :func:`diag_log_density` does not lay out)."""
    from hmmlearn.stats import _log_multivariate_normal_density_diag
    return _log_multivariate_normal_density_diag(X, means, covars)


def diag_log_density(X: np.ndarray, means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """hmmlearn's ``_log_multivariate_normal_density_diag`` (X: days × features, means and covars:
    states × features -> days × states), bit for bit and in the same memory order, about 5 times faster
    on a few thousand days.

    hmmlearn writes ``((X[:, None, :] - means) ** 2 / covars).sum(axis=-1)``; the order in which numpy then
    adds a day's feature terms depends on X's memory layout: for a column-major X (what ``fit`` passes:
    a DataFrame's ``to_numpy()``) numpy adds them one by one, feature after feature; for a row-major X it
    sums each row pairwise (:func:`~hydra_engine.exact_sums.row_sum`). Both are repeated here term by term;
    any other layout (or a single day, state or feature, where a layout is both) goes to hmmlearn's
    function itself."""
    if not (isinstance(X, np.ndarray) and isinstance(means, np.ndarray) and X.ndim == 2 and means.ndim == 2
            and X.dtype == np.float64 and means.dtype == np.float64 and min(X.shape) > 1 and min(means.shape) > 1
            and means.flags.c_contiguous and not means.flags.f_contiguous
            and X.flags.c_contiguous != X.flags.f_contiguous):
        return _hmmlearn_diag_log_density(X, means, covars)
    nc, nf = means.shape
    covars = np.maximum(covars, np.finfo(float).tiny)
    if not (covars.shape == (nc, nf) and covars.flags.c_contiguous):
        return _hmmlearn_diag_log_density(X, means, covars)
    column_major = X.flags.f_contiguous
    with np.errstate(over="ignore"):
        # (features, states, days): element for element the same subtraction, square and division
        sq = np.subtract((X.T if column_major else np.ascontiguousarray(X.T))[:, None, :], means.T[:, :, None])
        np.square(sq, out=sq)                  # what ``** 2`` runs (numpy's fast path for the power 2)
        np.divide(sq, covars.T[:, :, None], out=sq)
        if column_major:
            total = np.zeros(sq.shape[1:])     # numpy's reduction: the add identity 0.0, then each feature
            for k in range(nf):
                total += sq[k]
        else:
            total = row_sum(sq)                                   # states × days
        head = nf * np.log(2 * np.pi) + np.log(covars).sum(axis=-1)  # per state, as hmmlearn adds it first
        out = np.empty((len(X), nc), order="F" if column_major else "C")
        np.add(head, total.T, out=out)
        out *= -0.5
    return out


class DiagGaussianHMM(GaussianHMM):
    """hmmlearn's GaussianHMM with :func:`diag_log_density` as its (diagonal) emission log-likelihood."""

    def _compute_log_likelihood(self, X):
        if self.covariance_type != "diag":
            return super()._compute_log_likelihood(X)
        return diag_log_density(X, self.means_, self._covars_)


def fit_restart(xc: np.ndarray, n_states: int, n_iter: int, random_state: int):
    """One EM restart as :meth:`HMMRegimeDetector.fit` runs it: (model, log-likelihood), or (None, the
    error's text) for a degenerate restart."""
    # k-means++ seeding instead of hmmlearn's full k-means: as good a start for EM, and
    # cheap enough to afford many restarts (the best of several is what makes refits agree)
    m = DiagGaussianHMM(n_states, covariance_type="diag", n_iter=n_iter, tol=1e-2, min_covar=1e-3,
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
    :func:`fit_workers`, 1 unless configured; this process counts as one) they are shared between this process and
    ``workers - 1`` forked ones (:func:`_fit_shared`), each restart whole in one process: the same code on
    the same numbers, so the same bits, returned in restart order (the caller's pick among them is the
    serial loop's, ties included). One restart after the other in this process with one worker,
    when other threads are running (see :func:`_can_fork`), or when the pool cannot start or fails (then
    all of them are run here, from the first, so an error is raised as the serial loop raises it)."""
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


__all__ = ["DiagGaussianHMM", "diag_log_density", "fit_restart", "fit_restarts", "fit_workers"]
