"""The Q/K row permutation matches llama.cpp's converter layout."""

import numpy as np

from kolm.export import permute_rows


def test_permute_rows_interleaves_rotary_halves_per_head():
    n_head, head_dim, r = 2, 4, 3
    w = np.arange(n_head * head_dim * r).reshape(n_head * head_dim, r)
    p = permute_rows(w, n_head)
    # Per head, HF keeps the two rotary halves [0,1 | 2,3]; llama.cpp wants them interleaved [0,2,1,3].
    assert [row[0] // r for row in p] == [0, 2, 1, 3, 4, 6, 5, 7]
    assert p.shape == w.shape
    assert sorted(map(tuple, p)) == sorted(map(tuple, w))
