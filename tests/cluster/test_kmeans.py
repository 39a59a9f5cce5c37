import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchshrink.cluster.kmeans import init_centroids, kmeans_1d, lloyd, optimal_1d, sse


def brute_force(x: np.ndarray, k: int) -> float:
    u = np.unique(x)
    k = min(k, u.size)
    best = np.inf
    for cuts in itertools.combinations(range(1, u.size), k - 1):
        edges = [u[0]] + [u[c] for c in cuts] + [np.inf]
        total = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            seg = x[(x >= lo) & (x < hi)]
            total += float(((seg - seg.mean()) ** 2).sum())
        best = min(best, total)
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-20, 20), min_size=1, max_size=9), st.integers(1, 5))
def test_optimal_matches_brute_force(values: list[int], k: int) -> None:
    x = np.array(values, dtype=np.float64) / 10
    c, a = optimal_1d(x, k)
    assert np.all(np.diff(c) > 0)
    assert sse(x, c, a) == pytest.approx(brute_force(x, k), abs=1e-9)


def test_optimal_never_worse_than_lloyd() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.02, 4000), rng.laplace(0, 0.05, 4000)])
    co, ao = optimal_1d(x, 16)
    for init in ("linear", "density", "random"):
        cl, al = lloyd(x, 16, init=init)
        assert sse(x, co, ao) <= sse(x, cl, al) + 1e-12
        assert cl.size == 16 or init == "random"


def test_inits() -> None:
    x = np.linspace(-1, 1, 101) ** 3
    lin = init_centroids(x, 5, "linear")
    assert lin == pytest.approx([-1, -0.5, 0, 0.5, 1])
    dens = init_centroids(x, 5, "density")
    assert np.abs(dens).max() < 0.8  # quantiles crowd where the weights are
    rnd = init_centroids(x, 5, "random", seed=3)
    assert set(rnd) <= set(x) and rnd.size == 5


def test_fewer_unique_values_than_k() -> None:
    x = np.array([1.0, 1.0, 2.0])
    c, a = kmeans_1d(x, 8, algorithm="optimal")
    assert c.tolist() == [1.0, 2.0] and a.tolist() == [0, 0, 1]
    c, a = kmeans_1d(np.zeros(0), 4)
    assert c.size == 0
