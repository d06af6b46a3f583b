"""data=smallnorb: the binary-matrix reader, the loader and its cache, stereo channels, the
viewpoint splits and the crop / standardisation pipeline, on small files written in the exact
format by tests.helpers.write_smallnorb."""
import gzip

import numpy as np
import pytest
import tensorflow as tf

from capsrun.config.validation import validate
from capsrun.data import pipeline, smallnorb_files
from capsrun.data.smallnorb_files import FILE_NAMES, PREFIXES, load_smallnorb, read_binary_matrix
from capsrun.data.splits import load_splits
from capsrun.errors import CapsrunError
from tests.conftest import compose_config
from tests.helpers import smallnorb_info, write_binary_matrix, write_smallnorb

PAIRS = 40


@pytest.fixture(scope="module")
def norb_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("norb")
    written = write_smallnorb(folder, PAIRS, gz=True)
    return folder, written


def splits_of(folder, *overrides):
    cfg = compose_config("data=smallnorb", f"data.path={folder}", "data.val_size=8", "data.train_size=null",
                         "data.test_size=null", *overrides)
    validate(cfg)
    return load_splits(cfg.data, cfg.seed)


def test_a_one_dimensional_header_stores_three_sizes_and_reads_back(tmp_path):
    labels = np.arange(7, dtype=np.int32) % 5
    path = write_binary_matrix(tmp_path / "cat.mat", labels, gz=False)
    raw = path.read_bytes()
    assert np.frombuffer(raw[:20], "<i4").tolist() == [0x1E3D4C54, 1, 7, 1, 1]  # magic, ndim, 3 sizes
    assert len(raw) == 20 + 4 * 7
    np.testing.assert_array_equal(read_binary_matrix(path), labels)
    pairs = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    read = read_binary_matrix(write_binary_matrix(tmp_path / "dat.mat", pairs, gz=True))
    assert read.dtype == np.uint8 and read.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(read, pairs)


def test_gzipped_and_raw_files_load_the_same_arrays(norb_folder, tmp_path):
    folder, written = norb_folder
    write_smallnorb(tmp_path, PAIRS, gz=False)
    assert not list(tmp_path.glob("*.gz"))
    raw, zipped = load_smallnorb(tmp_path, 96, use_cache=False), load_smallnorb(folder, 96, use_cache=False)
    for name in smallnorb_files.FIELDS:
        np.testing.assert_array_equal(getattr(raw, name), getattr(zipped, name))
    np.testing.assert_array_equal(zipped.x_train, written["train"][0])
    np.testing.assert_array_equal(zipped.info_test, written["test"][2])
    assert zipped.y_train.dtype == np.int32 and zipped.info_train.shape == (PAIRS, 4)


def test_a_wrong_magic_number_is_one_line_naming_the_file(tmp_path):
    write_smallnorb(tmp_path, 5, gz=False)
    path = tmp_path / f"{PREFIXES['test']}-cat.mat"
    raw = bytearray(path.read_bytes())
    raw[:4] = (0x1E3D4C99).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CapsrunError) as error:
        load_smallnorb(tmp_path, 48, use_cache=False)
    message = str(error.value)
    assert "0x1E3D4C99" in message and str(path) in message and "magic" in message and "\n" not in message


@pytest.mark.parametrize("cut", [3, 17, 1000, "padded"])
def test_a_truncated_file_is_one_line_naming_the_file(tmp_path, cut):
    write_smallnorb(tmp_path, 5, gz=False)
    path = tmp_path / f"{PREFIXES['train']}-dat.mat"
    raw = path.read_bytes()
    path.write_bytes(raw + b"\0" * 7 if cut == "padded" else raw[:-cut] if cut == 1000 else raw[:cut])
    with pytest.raises(CapsrunError) as error:
        load_smallnorb(tmp_path, 48, use_cache=False)
    assert str(path) in str(error.value) and "truncated" in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_gzip_is_one_line(tmp_path):
    write_smallnorb(tmp_path, 5, gz=True)
    path = tmp_path / f"{PREFIXES['train']}-info.mat.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(CapsrunError, match="truncated or damaged"):
        load_smallnorb(tmp_path, 48, use_cache=False)


def test_images_of_another_size_are_refused(tmp_path):
    write_smallnorb(tmp_path, 5, gz=False, side=64)
    with pytest.raises(CapsrunError, match=r"not smallNORB's stereo pairs \[2, 96, 96\]"):
        load_smallnorb(tmp_path, 48, use_cache=False)


def test_missing_files_are_one_line_naming_all_six_and_data_path(tmp_path):
    write_smallnorb(tmp_path, 5, gz=True)
    (tmp_path / f"{PREFIXES['test']}-info.mat.gz").unlink()
    with pytest.raises(CapsrunError) as error:
        splits_of(tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and "data.path" in message
    assert all(name in message for name in FILE_NAMES) and smallnorb_files.DOWNLOAD in message


def test_validation_needs_a_path_and_keeps_the_keys_to_smallnorb(tmp_path):
    with pytest.raises(CapsrunError, match="data=smallnorb needs data.path"):
        validate(compose_config("data=smallnorb"))
    with pytest.raises(CapsrunError, match="data.stereo applies to data=smallnorb"):
        validate(compose_config("data.stereo=true"))
    with pytest.raises(CapsrunError, match="data.test_crops=13"):
        validate(compose_config("data=smallnorb", f"data.path={tmp_path}", "data.crop_size=44", "data.test_crops=13"))
    with pytest.raises(CapsrunError, match="data.viewpoint_split must be one of"):
        validate(compose_config("data=smallnorb", f"data.path={tmp_path}", "data.viewpoint_split=lighting"))


def test_stereo_gives_both_cameras_as_channels_and_mono_the_left(norb_folder):
    folder, written = norb_folder
    mono, stereo = splits_of(folder), splits_of(folder, "data.stereo=true")
    assert mono.image_shape == (32, 32, 1) and stereo.image_shape == (32, 32, 2)
    assert mono.test.images.shape == (PAIRS, 48, 48, 1) and stereo.test.images.shape == (PAIRS, 48, 48, 2)
    dat = written["test"][0].astype(np.float64)
    for camera in (0, 1):  # the 96 -> 48 resize averages 2x2 blocks (TensorFlow's bilinear, half-pixel centres)
        means = dat[:, camera].reshape(PAIRS, 48, 2, 48, 2).mean(axis=(2, 4))
        assert np.abs(stereo.test.images[..., camera] - means).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(mono.test.images[..., 0], stereo.test.images[..., 0])
    assert not np.array_equal(stereo.test.images[..., 0], stereo.test.images[..., 1])
    assert mono.class_names == ("animal", "human", "airplane", "truck", "car") and mono.num_classes == 5
    np.testing.assert_array_equal(mono.test.labels, written["test"][1])
    np.testing.assert_array_equal(mono.test.info, written["test"][2])


def test_no_viewpoint_split_uses_every_pair_and_validation_from_training(norb_folder):
    folder, _ = norb_folder
    splits = splits_of(folder)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (PAIRS - 8, 8, PAIRS)
    assert not splits.extra_tests
    seen = np.concatenate([splits.train.info, splits.val.info])
    assert sorted(map(tuple, seen)) == sorted(map(tuple, smallnorb_info(PAIRS)))


@pytest.mark.parametrize("split,column,familiar,novel", [
    ("azimuth", 2, {30, 32, 34, 0, 2, 4}, set(range(6, 30, 2))),    # 300..40 degrees vs 60..280 degrees
    ("elevation", 1, {0, 1, 2}, set(range(3, 9))),
])
def test_viewpoint_splits_train_and_test_on_familiar_views_and_report_novel_ones(norb_folder, split, column,
                                                                                familiar, novel):
    folder, written = norb_folder
    splits = splits_of(folder, f"data.viewpoint_split={split}", "data.val_size=2")
    for part in (splits.train, splits.val, splits.test):
        assert len(part) and set(part.info[:, column]) <= familiar
    test_info = written["test"][2]
    assert set(splits.test.info[:, column]) == familiar & set(test_info[:, column])
    assert set(splits.extra_tests["novel"].info[:, column]) == novel
    assert len(splits.test) + len(splits.extra_tests["novel"]) == PAIRS
    assert len(splits.train) + len(splits.val) == int(np.isin(written["train"][2][:, column], list(familiar)).sum())
    limited = splits_of(folder, f"data.viewpoint_split={split}", "data.val_size=2", "data.test_size=3")
    assert len(limited.test) == 3 and len(limited.extra_tests["novel"]) == 3
    np.testing.assert_array_equal(limited.extra_tests["novel"].images, splits.extra_tests["novel"].images[:3])


def test_the_second_load_reads_the_cache_not_the_files(tmp_path, monkeypatch):
    write_smallnorb(tmp_path, 10, gz=True)
    first = load_smallnorb(tmp_path, 48)
    caches = list((tmp_path / smallnorb_files.CACHE_FOLDER).glob("smallnorb-48-*.npz"))
    assert len(caches) == 1 and not list(caches[0].parent.glob(".*.tmp"))

    def no_reading(path):
        raise AssertionError(f"read {path} although the cache is valid")

    monkeypatch.setattr(smallnorb_files, "read_binary_matrix", no_reading)
    second = load_smallnorb(tmp_path, 48)
    for name in smallnorb_files.FIELDS:
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    with pytest.raises(AssertionError, match="although the cache"):  # another size is another cache
        load_smallnorb(tmp_path, 32)


def test_a_damaged_cache_is_rebuilt_and_a_changed_file_is_a_new_cache(tmp_path):
    write_smallnorb(tmp_path, 10, gz=True)
    first = load_smallnorb(tmp_path, 48)
    (cache,) = (tmp_path / smallnorb_files.CACHE_FOLDER).glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:200])
    again = load_smallnorb(tmp_path, 48)
    np.testing.assert_array_equal(again.x_test, first.x_test)
    np.testing.assert_array_equal(np.load(cache)["x_test"], first.x_test)
    path = tmp_path / f"{PREFIXES['test']}-cat.mat.gz"
    labels = (np.arange(10) % 5)[::-1].astype(np.int32)
    path.write_bytes(gzip.compress(np.asarray([0x1E3D4C54, 1, 10, 1, 1], "<i4").tobytes() + labels.tobytes()))
    changed = load_smallnorb(tmp_path, 48)
    np.testing.assert_array_equal(changed.y_test, labels)
    assert len(list(cache.parent.glob("*.npz"))) == 1  # the stale cache is replaced


def test_test_inputs_are_the_standardised_centre_crop_and_deterministic(norb_folder):
    folder, _ = norb_folder
    splits = splits_of(folder, "data.stereo=true")
    batches = [np.concatenate([batch[0].numpy() for batch in pipeline.eval_dataset(splits.test, 16)])
               for _ in range(2)]
    np.testing.assert_array_equal(batches[0], batches[1])
    centre = splits.test.images[:, 8:40, 8:40, :].astype(np.float64)
    mean = centre.mean(axis=(1, 2, 3), keepdims=True)
    std = centre.std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(batches[0], (centre - mean) / std, rtol=1e-4, atol=1e-4)
    labels = np.concatenate([batch[1].numpy() for batch in pipeline.eval_dataset(splits.test, 16)])
    np.testing.assert_array_equal(labels, splits.test.labels)
    images, _, _ = pipeline.unpack(next(iter(pipeline.eval_dataset(splits.test, 4))))
    assert images.dtype == tf.float32 and float(tf.reduce_min(images)) < 0  # float inputs pass unpack unscaled


def test_the_13_test_crops_are_the_centre_and_diagonal_shifts(norb_folder):
    folder, _ = norb_folder
    splits = splits_of(folder)
    offsets = pipeline.crop_offsets(48, 32)
    assert offsets[0] == (8, 8) and len(set(offsets)) == 13
    assert sorted({abs(top - 8) for top, left in offsets}) == [0, 1, 2, 3]
    assert all(abs(top - 8) == abs(left - 8) for top, left in offsets)
    views = pipeline.crop_views(splits.test.images[:5], splits.test.preprocessing).numpy()
    assert views.shape == (13, 5, 32, 32, 1)
    centre = np.concatenate([batch[0].numpy() for batch in pipeline.eval_dataset(splits.test, 5)])[:5]
    np.testing.assert_allclose(views[0], centre, atol=1e-6)
    top, left = offsets[12]
    crop = splits.test.images[:5, top:top + 32, left:left + 32].astype(np.float64)
    expected = (crop - crop.mean(axis=(1, 2, 3), keepdims=True)) / crop.std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(views[12], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at least 38"):
        pipeline.crop_offsets(36, 32)


def test_training_crops_are_random_per_epoch_and_reproducible(norb_folder):
    folder, _ = norb_folder
    splits = splits_of(folder)

    def epoch(seed, number):
        return next(iter(pipeline.train_dataset(splits.train, 8, seed, number, 0)))[0].numpy()

    first = epoch(0, 0)
    assert first.shape == (8, 32, 32, 1) and first.dtype == np.float32
    np.testing.assert_allclose(first.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(first.std(axis=(1, 2, 3)), 1, atol=1e-3)
    np.testing.assert_array_equal(first, epoch(0, 0))
    # 8 copies of one image: the order cannot differ, only the crops, which change with epoch and seed
    same = splits.train.take(np.zeros(8, int))

    def copies(seed, number):
        return next(iter(pipeline.train_dataset(same, 8, seed, number, 0)))[0].numpy()

    np.testing.assert_array_equal(copies(0, 0), copies(0, 0))
    assert not np.array_equal(copies(0, 0), copies(0, 1)) and not np.array_equal(copies(0, 0), copies(1, 0))
    # every training input is one of the 17 x 17 crops of its stored image, standardised
    order = np.random.default_rng([0, 0]).permutation(len(splits.train))[:8]
    for image, source in zip(first, splits.train.images[order].astype(np.float64)):
        windows = np.lib.stride_tricks.sliding_window_view(source[..., 0], (32, 32)).reshape(-1, 32, 32)
        windows = (windows - windows.mean(axis=(1, 2), keepdims=True)) / windows.std(axis=(1, 2), keepdims=True)
        assert np.abs(windows - image[..., 0]).max(axis=(1, 2)).min() < 1e-3


def test_13_crop_evaluation_averages_the_scores_of_all_views(norb_folder):
    from types import SimpleNamespace

    from capsrun.analysis.evaluation import averaged_over_crops
    from capsrun.models.base import SCORES

    folder, _ = norb_folder
    test = splits_of(folder).test
    labels = test.labels
    wrong, right = np.eye(5)[(labels + 1) % 5], np.eye(5)[labels]
    views = []

    class Views:  # the centre crop scores the wrong class, the other 12 views the right one
        model = SimpleNamespace(predict_labels=lambda scores: tf.argmax(scores, axis=-1))

        def run(self, split, keep_outputs):
            views.append(split.preprocessing.view)
            assert split.preprocessing.crop_size == 32 and split.images is test.images
            return {SCORES: (wrong if split.preprocessing.view == 0 else right).astype(np.float32)}

    centre = {SCORES: wrong.astype(np.float32), "accuracy": 0.0, "margin_loss": 1.5}
    averaged = averaged_over_crops(Views(), test, centre, 5)
    assert views == list(range(1, 13))
    np.testing.assert_allclose(averaged[SCORES], (wrong + 12 * right) / 13, rtol=1e-6)
    np.testing.assert_array_equal(averaged["predictions"], labels)
    assert averaged["accuracy"] == 1.0 and averaged["centre_crop_accuracy"] == 0.0 and averaged["margin_loss"] == 1.5
    np.testing.assert_array_equal(averaged["confusion_matrix"], np.diag(np.bincount(labels, minlength=5)))
