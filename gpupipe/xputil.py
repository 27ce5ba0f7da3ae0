"""Small array helpers written once over numpy | CuPy.

`unique` is sort-based on purpose: numpy 2.4's ``np.unique`` takes a hash-table
path that measured 10-20x slower than one stable argsort here (1.1 s for 3 calls
on 70,000-730,000 int64 values; 13 s on 10M), and CuPy's is sort-based anyway.
"""

from __future__ import annotations

import numpy as np


def unique(a, xp=np, *, return_index: bool = False, return_inverse: bool = False):
    """Sorted distinct values of 1-D ``a``, like ``xp.unique``.

    return_index: also the index of each value's first occurrence in ``a``.
    return_inverse: also, per element of ``a``, the position of its value.
    """
    n = int(a.shape[0])
    # Stable order (ties by index), so return_index gives first occurrences;
    # lexsort on (index, value) guarantees it where argsort has no kind=.
    order = xp.argsort(a, kind="stable") if xp is np else xp.lexsort(xp.stack([xp.arange(n), a]))
    s = a[order]
    first = xp.ones(n, dtype=bool)
    if n:
        first[1:] = s[1:] != s[:-1]
    values = s[first]
    if not (return_index or return_inverse):
        return values
    out = [values]
    if return_index:
        out.append(order[first])
    if return_inverse:
        inv = xp.empty(n, dtype=xp.int64)
        inv[order] = xp.cumsum(first) - 1
        out.append(inv)
    return tuple(out)
