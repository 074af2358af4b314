"""The response's mask encoding: the column-major copy gives the very same COCO RLE."""

from __future__ import annotations

import numpy as np
import pytest

from api.mapping import column_major
from search.masks import decode_rle, encode_rle


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (480, 640), (643, 1024)])
def test_column_major_mask_encodes_identically(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.3
    mask[: shape[0] // 2] = False
    fast = column_major(mask)
    assert fast.shape == mask.shape and fast.dtype == np.bool_
    assert np.array_equal(fast, mask) and fast.flags.f_contiguous
    assert encode_rle(fast) == encode_rle(mask)
    assert np.array_equal(decode_rle(encode_rle(fast)), mask)
