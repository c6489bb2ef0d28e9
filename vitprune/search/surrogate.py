"""Surrogate models: a cheap probabilistic stand-in for the objective, fitted to the trials.

The loop sees only :class:`Surrogate` (fit, predict mean and std), so another model (a random
forest, a GP from another library) can replace the GP without touching the loop.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Protocol

import numpy as np

from ..errors import DependencyError, SearchError

_MISSING = ("the gp-ei search needs {}, a dependency of vitprune that is missing here: "
            "pip install scikit-learn scipy (or reinstall vitprune), or use --method random")


def check_dependencies(method: str) -> None:
    """Raise :class:`DependencyError` before any work when ``method`` needs a package this
    installation lacks (found without importing it)."""
    import importlib.util

    if method == "gp-ei":
        for module, package in (("sklearn", "scikit-learn"), ("scipy", "scipy")):
            if importlib.util.find_spec(module) is None:
                raise DependencyError(_MISSING.format(package))


class Surrogate(Protocol):
    """A regression model with uncertainty, on inputs scaled to the unit cube."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Fit to inputs ``X`` (N, F) in [0, 1] and objective values ``y`` (N,)."""

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at ``X`` (M, F), each (M,), in units of y."""


class GPSurrogate:
    """Gaussian process: Matern 5/2 with one length scale per input (ARD) plus white noise.

    scikit-learn's ``GaussianProcessRegressor`` with ``normalize_y`` (outputs standardised), the
    kernel's hyper-parameters fitted by maximum marginal likelihood. White noise because the
    objective (accuracy on a calibration split) is noisy and integer plateaus give different
    ratio vectors the same architecture.

    Args:
        seed: seeds the optimiser's random restarts (fits are reproducible).
        restarts: extra optimiser restarts from random hyper-parameters.
        length_scale_bounds: bounds of each length scale, in unit-cube units; the upper bound lets
            an irrelevant input be ignored.
        noise_bounds: bounds of the white-noise variance, in standardised-output units.
        blas_threads: BLAS threads while fitting and predicting (``None``: leave as is). One by
            default: the matrices are a few hundred wide at most, too small to gain from threads,
            and on a shared machine idle-spinning BLAS threads slowed fits down 1.6x.
    """

    def __init__(self, seed: int = 0, restarts: int = 2,
                 length_scale_bounds: tuple[float, float] = (1e-2, 1e2),
                 noise_bounds: tuple[float, float] = (1e-6, 1e-1),
                 blas_threads: int | None = 1) -> None:
        self.seed = seed
        self.restarts = restarts
        self.length_scale_bounds = length_scale_bounds
        self.noise_bounds = noise_bounds
        self.blas_threads = blas_threads
        self._gp = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Fit the GP's hyper-parameters and posterior to (X, y)."""
        try:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.gaussian_process import GaussianProcessRegressor
            from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
        except ImportError as exc:  # checked up front (check_dependencies); a broken install
            raise DependencyError(_MISSING.format("scikit-learn")) from exc
        d = X.shape[1]
        matern = Matern(length_scale=np.full(d, 0.5),
                        length_scale_bounds=self.length_scale_bounds, nu=2.5)
        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * matern + WhiteKernel(1e-3, self.noise_bounds)
        gp = GaussianProcessRegressor(kernel, normalize_y=True,
                                      n_restarts_optimizer=self.restarts, random_state=self.seed)
        with warnings.catch_warnings(), self._threads():
            # irrelevant inputs drive their length scale to the bound: expected, not a problem
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64))
        self._gp = gp

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at ``X`` (M, F)."""
        if self._gp is None:
            raise SearchError("GPSurrogate.predict called before fit: call fit(X, y) first")
        with self._threads():
            mu, sd = self._gp.predict(np.asarray(X, dtype=np.float64), return_std=True)
        return mu, sd

    def _threads(self) -> contextlib.AbstractContextManager:
        """A context limiting BLAS threads to ``blas_threads`` (scoped, restored on exit)."""
        if self.blas_threads is None:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        return threadpool_limits(limits=self.blas_threads, user_api="blas")
