"""The train / validation / test splits of the bundled MNIST."""
import numpy as np

from capsrun.data.splits import load_splits
from tests.conftest import compose_config


def test_bundled_mnist_has_all_70000_digits_and_passes_checksums():
    cfg = compose_config(experiment=None)
    splits = load_splits(cfg.data, seed=0)
    assert len(splits.train) == 55_000 and len(splits.val) == 5_000 and len(splits.test) == 10_000
    assert splits.image_shape == (28, 28, 1) and splits.num_classes == 10
    assert splits.train.images.dtype == np.uint8
    assert sorted(np.unique(splits.test.labels)) == list(range(10))


def test_validation_split_is_fixed_by_seed_and_disjoint_from_training():
    cfg = compose_config("data.train_size=2000", "data.val_size=500")
    a, b, c = (load_splits(cfg.data, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.images, c.val.images)
    train_rows = {row.tobytes() for row in a.train.images}
    assert len(a.train) == 2000 and not any(row.tobytes() in train_rows for row in a.val.images[:200])
