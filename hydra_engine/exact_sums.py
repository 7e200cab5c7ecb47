"""numpy's order of summing one contiguous row, repeated over whole vectors (issue #24: speed-ups that
change no bit).

``a.sum(axis=-1)`` on a row-major array adds each row's values in a fixed order (numpy's ``pairwise_sum``,
loops_utils.h): the reduction's start value 0.0 plus the row's sum, where a row of fewer than 8 values is
summed one by one from 0.0, and a row of 8 to 128 values in eight running sums (values 0-7, then 8-15 added
to them, ...), combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), then the leftover values one
by one. :func:`row_sum` does exactly that to ``terms[0], terms[1], ...`` (each a whole vector of rows), so
a computation laid out term-major, with long inner loops, gives the bits of the row-major one. The tests
(tests/test_regime_fast.py) compare it with numpy's own sum on adversarial magnitudes.
"""
from __future__ import annotations

import numpy as np

PAIRWISE_BLOCK = 128   # numpy's PW_BLOCKSIZE: rows up to this length are summed by the unrolled loop


def row_sum(terms: np.ndarray) -> np.ndarray:
    """``np.moveaxis(terms, 0, -1)`` made row-major and summed over its last axis, without that copy.
    Rows longer than :data:`PAIRWISE_BLOCK` (never a feature count here) are handed to numpy itself."""
    n = len(terms)
    if n > PAIRWISE_BLOCK:
        return np.ascontiguousarray(np.moveaxis(terms, 0, -1)).sum(axis=-1)
    if n < 8:
        res = np.zeros(terms.shape[1:])
        for i in range(n):
            res += terms[i]
        return res
    r = terms[:8].copy()                       # the eight running sums
    i = 8
    while i < n - (n % 8):
        r += terms[i:i + 8]
        i += 8
    res = r[0] + r[1]
    res += r[2] + r[3]
    r45, r67 = r[4] + r[5], r[6] + r[7]
    r45 += r67
    res += r45                                 # ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for k in range(i, n):
        res += terms[k]
    return np.add(0.0, res, out=res)           # the reduction's start value 0.0 plus the row's sum


__all__ = ["PAIRWISE_BLOCK", "row_sum"]
