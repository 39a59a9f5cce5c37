"""1-D k-means for weight sharing: Lloyd's iterations and the exact optimum by dynamic programming.

Both work on a flat float array of the weights to share (the nonzeros: pruned zeros are never
clustered). Centroids come back sorted ascending, assignments index into them.

The optimal solver is the classic O(k n^2) dynamic program made O(k n log n) by the
monotonicity of optimal split points (divide and conquer), and vectorized level by level so
that a whole recursion depth is one NumPy pass rather than n Python calls.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["Init", "Algorithm", "init_centroids", "lloyd", "optimal_1d", "kmeans_1d", "sse"]

Init = Literal["linear", "density", "random"]
Algorithm = Literal["lloyd", "optimal"]


def init_centroids(x: np.ndarray, k: int, init: Init, *, seed: int = 0) -> np.ndarray:
    """Deep Compression's three initializations (section 3.1).

    linear: evenly spaced over [min, max] (keeps the rare large weights, which matter most);
    density: evenly spaced quantiles of the weights' CDF;
    random ("Forgy"): k distinct weights drawn at random.
    """
    x = np.asarray(x, dtype=np.float64)
    if init == "linear":
        return np.linspace(x.min(), x.max(), k)
    if init == "density":
        return np.quantile(x, (np.arange(k) + 0.5) / k)
    if init == "random":
        rng = np.random.default_rng(seed)
        uniq = np.unique(x)
        return np.sort(rng.choice(uniq, size=min(k, uniq.size), replace=False))
    raise ValueError(f"init must be 'linear', 'density' or 'random', got {init!r}")


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid; centroids sorted, so nearest = bucket between midpoints."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, x, side="left").astype(np.int64)


def sse(x: np.ndarray, centroids: np.ndarray, assign: np.ndarray) -> float:
    """Sum of squared distances of each point to its centroid."""
    return float(((np.asarray(x, np.float64) - centroids[assign]) ** 2).sum())


def lloyd(x: np.ndarray, k: int, *, init: Init = "linear", max_iter: int = 100, tol: float = 1e-10,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm in 1-D. Returns (sorted centroids, assignment)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    c = np.sort(init_centroids(x, k, init, seed=seed))
    for _ in range(max_iter):
        a = _assign(x, c)
        counts = np.bincount(a, minlength=c.size)
        sums = np.bincount(a, weights=x, minlength=c.size)
        # An empty cluster keeps its centroid rather than collapsing (linear init often has
        # empty tails; they cost nothing and may fill as others move).
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new = np.sort(new)
        shift = float(np.abs(new - c).max())
        c = new
        if shift <= tol * max(1.0, float(np.abs(c).max())):
            break
    return c, _assign(x, c)


def optimal_1d(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact minimum-SSE k-means in 1-D (dynamic programming over sorted points).

    D[m][i] = min over j of D[m-1][j-1] + cost(j..i), with cost from prefix sums. The optimal j
    is monotone in i, so each DP row is filled by divide and conquer; every recursion level is
    evaluated at once with flat NumPy arrays. Returns (sorted centroids, assignment in the
    input's order).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # Work on unique values with multiplicities: same optimum, and duplicates cannot split.
    uniq, inverse_sorted, counts = np.unique(xs, return_inverse=True, return_counts=True)
    u = uniq.size
    k = max(1, min(k, u))
    w = counts.astype(np.float64)
    s0 = np.concatenate([[0.0], np.cumsum(w)])
    s1 = np.concatenate([[0.0], np.cumsum(w * uniq)])
    s2 = np.concatenate([[0.0], np.cumsum(w * uniq * uniq)])

    def cost(j: np.ndarray, i: np.ndarray) -> np.ndarray:  # points j..i inclusive
        cnt = s0[i + 1] - s0[j]
        sm = s1[i + 1] - s1[j]
        return np.maximum(s2[i + 1] - s2[j] - sm * sm / cnt, 0.0)

    idx = np.arange(u)
    prev = cost(np.zeros(u, dtype=np.int64), idx)
    splits = np.zeros((k, u), dtype=np.int64)  # start index of the last cluster
    for m in range(1, k):
        cur = np.full(u, np.inf)
        arg = np.zeros(u, dtype=np.int64)
        # tasks: query range [qlo, qhi] with candidate range [clo, chi]
        qlo = np.array([m]); qhi = np.array([u - 1]); clo = np.array([m]); chi = np.array([u - 1])  # noqa: E702
        while qlo.size:
            mid = (qlo + qhi) // 2
            lo = clo
            hi = np.minimum(chi, mid)
            lens = hi - lo + 1
            starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
            task = np.repeat(np.arange(mid.size), lens)
            j = lo[task] + (np.arange(lens.sum()) - starts[task])
            val = prev[j - 1] + cost(j, mid[task])
            best_val = np.minimum.reduceat(val, starts)
            # first candidate reaching the minimum in each task
            is_best = val == best_val[task]
            first = np.full(mid.size, -1, dtype=np.int64)
            pos = np.flatnonzero(is_best)
            tsk = task[pos]
            keep = np.concatenate([[True], tsk[1:] != tsk[:-1]])
            first[tsk[keep]] = j[pos[keep]]
            cur[mid] = best_val
            arg[mid] = first
            left = qlo <= mid - 1
            right = mid + 1 <= qhi
            qlo, qhi, clo, chi = (
                np.concatenate([qlo[left], mid[right] + 1]),
                np.concatenate([mid[left] - 1, qhi[right]]),
                np.concatenate([clo[left], first[right]]),
                np.concatenate([first[left], chi[right]]),
            )
        prev = cur
        splits[m] = arg
    # Backtrack the cluster boundaries.
    labels_u = np.empty(u, dtype=np.int64)
    end = u - 1
    centroids = np.empty(k)
    for m in range(k - 1, -1, -1):
        start = int(splits[m][end]) if m > 0 else 0
        labels_u[start : end + 1] = m
        centroids[m] = (s1[end + 1] - s1[start]) / (s0[end + 1] - s0[start])
        end = start - 1
    assign = np.empty(n, dtype=np.int64)
    assign[order] = labels_u[inverse_sorted]
    return centroids, assign


def kmeans_1d(x: np.ndarray, k: int, *, algorithm: Algorithm = "lloyd", init: Init = "linear",
              max_iter: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster `x` into at most `k` shared values. Returns (centroids, assignment)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    k = min(k, int(np.unique(x).size))  # never more shared values than distinct weights
    if algorithm == "optimal":
        return optimal_1d(x, k)
    if algorithm == "lloyd":
        return lloyd(x, k, init=init, max_iter=max_iter, seed=seed)
    raise ValueError(f"algorithm must be 'lloyd' or 'optimal', got {algorithm!r}")
