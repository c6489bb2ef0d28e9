"""The GP surrogate interpolates what it saw and is unsure where it saw nothing."""

from __future__ import annotations

import numpy as np

from vitprune.search import GPSurrogate


def test_gp_fits_a_smooth_function_and_knows_where_it_is_unsure():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 0.5, size=(25, 3))  # observed in one corner of the cube only

    def f(Z):  # the offset exercises normalize_y
        return 100 + 5 * np.sin(3 * Z[:, 0]) - 4 * Z[:, 1] ** 2

    gp = GPSurrogate(seed=0, restarts=0)
    gp.fit(X, f(X))
    near = rng.uniform(0.1, 0.4, size=(20, 3))
    mu, sd_near = gp.predict(near)
    assert np.abs(mu - f(near)).max() < 0.1
    _, sd_far = gp.predict(np.full((1, 3), 1.0))
    assert sd_far[0] > 10 * sd_near.max()


def test_gp_fit_is_reproducible():
    rng = np.random.default_rng(1)
    X, y = rng.uniform(size=(15, 4)), rng.normal(size=15)
    Z = rng.uniform(size=(5, 4))
    preds = []
    for _ in range(2):
        gp = GPSurrogate(seed=7, restarts=1)
        gp.fit(X, y)
        preds.append(np.concatenate(gp.predict(Z)))
    assert np.array_equal(preds[0], preds[1])
