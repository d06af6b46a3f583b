"""`capsrun predict`'s preparation of an image like an MNIST digit."""
import numpy as np
import pytest


def test_mnist_style_preparation():
    from capsrun.commands.predict import to_mnist

    rng = np.random.default_rng(0)
    paper = np.full((90, 120), 230.0) + rng.normal(0, 3, (90, 120))
    paper[20:70, 70:80] = 20.0  # a dark vertical bar ("1") right of centre on grey paper
    prepared = to_mnist(paper, invert="auto", center="auto")
    assert prepared.dtype == np.uint8 and prepared.shape == (28, 28)
    rows, cols = np.flatnonzero(prepared.max(axis=1) > 0), np.flatnonzero(prepared.max(axis=0) > 0)
    assert rows[-1] - rows[0] + 1 == 20 and cols[-1] - cols[0] + 1 <= 6
    weights = prepared.astype(float)
    centre = ((weights.sum(axis=1) * np.arange(28)).sum() / weights.sum(),
              (weights.sum(axis=0) * np.arange(28)).sum() / weights.sum())
    assert centre == pytest.approx((14.0, 14.0), abs=0.6)
    assert prepared[0].max() == 0 and prepared[:, 0].max() == 0  # the paper became black
    assert to_mnist(paper, invert="false", center="false").mean() > 200  # left as it is, resized
    already = rng.integers(0, 255, (28, 28)).astype(np.float32)
    assert np.array_equal(to_mnist(already, invert="false"), already.astype(np.uint8))
