"""Reading the real affNIST test set (capsrun.data.affnist_files) from .mat files written here in
the layout of the University of Toronto's files: a struct `affNISTdata` whose `image` is uint8
[1600, N], one 40x40 image per column in row-major order, with `label_int` [1, N] and
`label_one_of_n` [10, N]."""
import gzip
import zipfile

import numpy as np
import pytest
from scipy.io import savemat

from capsrun.data.affnist_files import load_affnist
from capsrun.data.splits import load_splits
from capsrun.errors import CapsrunError
from tests.conftest import compose_config


def affnist_struct(images, labels):
    """The affNISTdata struct of images uint8 [N, 40, 40] and labels [N]: pixel (r, c) of image n
    is image[40 * r + c, n], the layout affNIST's readers rely on."""
    count = len(images)
    labels = np.asarray(labels)
    return {
        "image": np.asarray(images, np.uint8).reshape(count, 1600).T.copy(),
        "label_int": labels.reshape(1, count).astype(np.uint8),
        "label_one_of_n": np.eye(10)[labels].T,
        "affine_transform": np.zeros((6, count)),
        "human_readable_transform": np.zeros((5, count)),
        "index": np.arange(1, count + 1, dtype=np.float64).reshape(1, count),
    }


def random_set(count, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 40, 40), dtype=np.uint8), rng.integers(0, 10, count)


def write_mat(path, images, labels, **changes):
    struct = affnist_struct(images, labels)
    struct.update(changes)
    savemat(path, {"affNISTdata": {key: value for key, value in struct.items() if value is not None}})
    return path


def write_batches(folder, sizes, seed=0):
    """Batches 1.mat .. K.mat of the given sizes in `folder`; returns all images [N, 40, 40] and labels [N]."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = [random_set(size, seed + number) for number, size in enumerate(sizes, start=1)]
    for number, (images, labels) in reversed(list(enumerate(sets, start=1))):  # written out of order
        write_mat(folder / f"{number}.mat", images, labels)
    return np.concatenate([images for images, _ in sets]), np.concatenate([labels for _, labels in sets])


def test_a_single_file_keeps_the_orientation_and_the_labels(tmp_path):
    image = np.zeros((1600, 3), np.uint8)
    image[40 * 3 + 30, 0] = 255   # row 3, column 30 of image 0
    image[40 * 35 + 1, 1] = 200   # row 35, column 1 of image 1
    path = write_mat(tmp_path / "test.mat", np.zeros((3, 40, 40)), [7, 0, 9], image=image)
    images, labels = load_affnist(path)
    assert images.shape == (3, 40, 40, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.tolist() == [7, 0, 9]
    assert images[0, 3, 30, 0] == 255 and images[0, 30, 3, 0] == 0 and np.count_nonzero(images[0]) == 1
    assert images[1, 35, 1, 0] == 200 and images[1, 1, 35, 0] == 0 and not images[2].any()


def test_images_come_back_as_written_and_the_limit_takes_the_first(tmp_path):
    written, written_labels = random_set(20, seed=1)
    path = write_mat(tmp_path / "test.mat", written, written_labels)
    images, labels = load_affnist(path)
    np.testing.assert_array_equal(images[..., 0], written)
    np.testing.assert_array_equal(labels, written_labels)
    images, labels = load_affnist(path, limit=5)
    np.testing.assert_array_equal(images[..., 0], written[:5])
    assert labels.tolist() == written_labels[:5].tolist()


def test_struct_variants_labels_as_a_column_only_one_of_n_and_a_single_image(tmp_path):
    written, written_labels = random_set(4, seed=2)
    column = write_mat(tmp_path / "column.mat", written, written_labels, label_int=written_labels.reshape(4, 1))
    assert load_affnist(column)[1].tolist() == written_labels.tolist()
    one_hot = write_mat(tmp_path / "one_hot.mat", written, written_labels, label_int=None)
    assert load_affnist(one_hot)[1].tolist() == written_labels.tolist()
    single = write_mat(tmp_path / "single.mat", written[:1], written_labels[:1])
    images, labels = load_affnist(single)
    np.testing.assert_array_equal(images[..., 0], written[:1])
    assert labels.tolist() == written_labels[:1].tolist()


def test_a_folder_of_batches_is_read_in_numeric_order(tmp_path):
    written, written_labels = write_batches(tmp_path / "test_batches", [2] * 11)  # 1.mat .. 11.mat: 10 after 9
    images, labels = load_affnist(tmp_path / "test_batches")
    np.testing.assert_array_equal(images[..., 0], written)
    np.testing.assert_array_equal(labels, written_labels)


def test_the_limit_stops_before_a_later_batch_is_read(tmp_path):
    written, _ = write_batches(tmp_path / "batches", [3, 3, 3])
    (tmp_path / "batches" / "3.mat").write_bytes(b"damaged")
    images, _ = load_affnist(tmp_path / "batches", limit=4)
    np.testing.assert_array_equal(images[..., 0], written[:4])
    with pytest.raises(CapsrunError, match="3.mat"):
        load_affnist(tmp_path / "batches")


def test_zipped_single_file_zipped_batches_and_gzip_read_as_the_unzipped_ones(tmp_path):
    written, written_labels = write_batches(tmp_path / "test_batches", [4, 3, 5])
    with zipfile.ZipFile(tmp_path / "test_batches.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for number in (3, 1, 2):
            archive.write(tmp_path / "test_batches" / f"{number}.mat", f"test_batches/{number}.mat")
        archive.writestr("__MACOSX/test_batches/._1.mat", b"resource fork")
    images, labels = load_affnist(tmp_path / "test_batches.zip")
    np.testing.assert_array_equal(images[..., 0], written)
    np.testing.assert_array_equal(labels, written_labels)

    single = write_mat(tmp_path / "test.mat", written, written_labels)
    with zipfile.ZipFile(tmp_path / "test.mat.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(single, "test.mat")
    (tmp_path / "test.mat.gz").write_bytes(gzip.compress(single.read_bytes()))
    for packed in ("test.mat.zip", "test.mat.gz"):
        images, labels = load_affnist(tmp_path / packed)
        np.testing.assert_array_equal(images[..., 0], written)
        np.testing.assert_array_equal(labels, written_labels)


def bad_input(tmp_path, case):
    """A path whose reading must fail, for each case of test_bad_input_is_one_line_naming_the_problem."""
    images, labels = random_set(3, seed=3)
    if case == "missing":
        return tmp_path / "nowhere" / "test.mat"
    if case == "not_mat":
        (tmp_path / "test.csv").write_text("1,2,3\n")
        return tmp_path / "test.csv"
    if case == "garbage_mat":
        (tmp_path / "test.mat").write_bytes(b"<html>404 Not Found</html>" * 10)
        return tmp_path / "test.mat"
    if case == "matlab_v73":  # the header of a MATLAB v7.3 (HDF5) file: version 0x0200, 'IM'
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + bytes(8) + b"\x00\x02IM"
        (tmp_path / "test.mat").write_bytes(header + bytes(400))
        return tmp_path / "test.mat"
    if case == "truncated_mat":
        whole = write_mat(tmp_path / "whole.mat", images, labels).read_bytes()
        (tmp_path / "test.mat").write_bytes(whole[: len(whole) // 2])
        return tmp_path / "test.mat"
    if case == "no_struct":
        savemat(tmp_path / "test.mat", {"images": np.zeros((1600, 3), np.uint8)})
        return tmp_path / "test.mat"
    if case == "no_image":
        return write_mat(tmp_path / "test.mat", images, labels, image=None)
    if case == "wrong_size":
        return write_mat(tmp_path / "test.mat", images, labels, image=np.zeros((784, 3), np.uint8))
    if case == "bad_labels":
        return write_mat(tmp_path / "test.mat", images, labels, label_int=np.array([[1, 10, 2]], np.uint8))
    if case == "label_count":
        return write_mat(tmp_path / "test.mat", images, labels, label_int=np.array([[1, 2]], np.uint8))
    if case == "truncated_zip":
        with zipfile.ZipFile(tmp_path / "full.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(write_mat(tmp_path / "test.mat", images, labels), "test.mat")
        whole = (tmp_path / "full.zip").read_bytes()
        (tmp_path / "test.mat.zip").write_bytes(whole[: len(whole) * 2 // 3])
        return tmp_path / "test.mat.zip"
    if case == "empty_folder":
        (tmp_path / "test_batches").mkdir()
        return tmp_path / "test_batches"
    if case == "missing_batch":
        write_batches(tmp_path / "test_batches", [2, 2, 2])
        (tmp_path / "test_batches" / "2.mat").unlink()
        return tmp_path / "test_batches"
    raise AssertionError(case)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("not_mat", "is not a .mat file"),
    ("garbage_mat", "cannot read .* as a MATLAB .mat file"),
    ("truncated_mat", "cannot read .* as a MATLAB .mat file"),
    ("matlab_v73", "is a MATLAB v7.3 .HDF5. file; affNIST's files are MATLAB v5"),
    ("no_struct", "has no affNISTdata struct .*variables: images"),
    ("no_image", "has no image field"),
    ("wrong_size", "images are 784 x 3, not 1600 x N"),
    ("bad_labels", "labels must be the digits 0..9, found 10"),
    ("label_count", "3 images but 2 labels"),
    ("truncated_zip", "truncated or damaged: download it again"),
    ("empty_folder", "holds no .mat files"),
    ("missing_batch", "lacks batch 2.mat of 1.mat .. 3.mat"),
])
def test_bad_input_is_one_line_naming_the_problem(tmp_path, case, message):
    with pytest.raises(CapsrunError, match=message) as caught:
        load_affnist(bad_input(tmp_path, case))
    text = str(caught.value)
    assert "\n" not in text and ("data.affine.path" in text or "download" in text or "extract" in text)


def test_load_splits_reports_the_file_as_the_affnist_set_limited_by_test_size(tmp_path):
    written, written_labels = random_set(40, seed=4)
    path = write_mat(tmp_path / "test.mat", written, written_labels)
    cfg = compose_config("data=affnist", f"data.affine.path={path}", "data.test_size=30")
    splits = load_splits(cfg.data, seed=0)
    assert list(splits.extra_tests) == ["affnist"] and len(splits.test) == 30
    np.testing.assert_array_equal(splits.extra_tests["affnist"].images[..., 0], written[:30])
    assert splits.extra_tests["affnist"].images.shape[1:] == splits.image_shape == (40, 40, 1)
    assert load_splits(cfg.data, seed=0, extra_tests=False).extra_tests == {}
    generated = load_splits(compose_config("data=affnist").data, seed=0)
    assert list(generated.extra_tests) == ["affine"]


def test_the_path_is_checked_with_the_config(tmp_path):
    from capsrun.config.validation import validate

    path = write_mat(tmp_path / "test.mat", *random_set(2, seed=5))
    validate(compose_config("data=affnist", f"data.affine.path={path}"))
    with pytest.raises(CapsrunError, match="applies to runs of data=affnist, not data=mnist"):
        validate(compose_config(f"data.affine.path={path}"))
    with pytest.raises(CapsrunError, match="keep data.canvas_size=40"):
        validate(compose_config("data=affnist", f"data.affine.path={path}", "data.canvas_size=48"))
    missing = compose_config("data=affnist", f"data.affine.path={tmp_path / 'gone.mat'}")
    with pytest.raises(CapsrunError, match="gone.mat does not exist"):
        validate(missing)
    validate(missing, check_files=False)
