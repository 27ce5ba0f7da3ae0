"""xputil.unique agrees with numpy's unique (values, first index, inverse)."""

import numpy as np
import pytest

from gpupipe.xputil import unique


@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_unique_matches_numpy(n):
    a = np.random.default_rng(n).integers(0, max(1, n // 3), size=n).astype(np.int64)
    v, i, inv = unique(a, np, return_index=True, return_inverse=True)
    ev, ei, einv = np.unique(a, return_index=True, return_inverse=True)
    assert np.array_equal(v, ev) and np.array_equal(i, ei) and np.array_equal(inv, einv.ravel())
    assert np.array_equal(unique(a, np), ev)


@pytest.mark.gpu
def test_unique_on_gpu_matches_numpy():
    import cupy as cp

    a = np.random.default_rng(0).integers(0, 1000, size=100_000).astype(np.int64)
    v, i, inv = (cp.asnumpy(x) for x in unique(cp.asarray(a), cp, return_index=True, return_inverse=True))
    ev, ei, einv = np.unique(a, return_index=True, return_inverse=True)
    assert np.array_equal(v, ev) and np.array_equal(i, ei) and np.array_equal(inv, einv.ravel())
