"""gpupipe.datasets: real-data loaders and the planted-defect generator's ground truth."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpupipe.datasets import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_PACKAGE, INVALID_KINDS, NEAR_KINDS,
    REENCODE_KINDS, GroundTruth, PlantedItem, load_digits_images, load_fashion_mnist, plant_dataset,
)

SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
PLANT = dict(seed=7, upscale=4, n_byte_copies=10, n_cross_class_copies=5, n_reencodes=8,
             n_near={k: 2 for k in NEAR_KINDS}, n_corrupt=12, split_fractions=SPLITS)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits_images()


@pytest.fixture(scope="module")
def planted(digits, tmp_path_factory) -> tuple[Path, GroundTruth]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("planted")
    return root, plant_dataset(*digits, root, **PLANT)


def test_load_digits_images(digits) -> None:  # noqa: ANN001
    images, labels = digits
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64 and set(labels) == set(range(10))
    assert images.min() == 0 and images.max() == 255


def test_planted_counts_and_kinds(planted) -> None:  # noqa: ANN001
    root, gt = planted
    kinds = Counter((it.category, it.kind) for it in gt.items)
    assert kinds[("copy", "byte_copy")] == 5 and kinds[("copy", "cross_split_copy")] == 5
    assert kinds[("copy", "cross_class_copy")] == 5
    assert all(kinds[("reencode", k)] == 2 for k in REENCODE_KINDS)
    assert all(kinds[("near", k)] == 2 for k in NEAR_KINDS)
    assert all(kinds[("invalid", k)] == 2 for k in INVALID_KINDS)
    assert len(gt.items) == 15 + 8 + 2 * len(NEAR_KINDS) + 12 and len(gt.originals) == 1797
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(gt.originals) | {it.path for it in gt.items}
    assert {p.split("/")[0] for p in on_disk} == set(SPLITS)
    sources = [it.source for it in gt.items if it.source is not None]
    assert len(sources) == len(set(sources)) == 23 + 2 * len(NEAR_KINDS) and set(sources) <= set(gt.originals)
    assert _rgb(root / next(iter(gt.originals))).shape == (32, 32, 3)  # upscaled 8x8 -> 32x32
    n_train = sum(p.startswith("train/") for p in gt.originals)
    assert abs(n_train / 1797 - 0.8) < 0.01


def test_copies_are_byte_identical(planted) -> None:  # noqa: ANN001
    root, gt = planted
    for it in gt.items:
        if it.category == "copy":
            assert (root / it.path).read_bytes() == (root / it.source).read_bytes()
            same_class = gt.class_of(it.path) == gt.class_of(it.source)
            same_split = it.path.split("/")[0] == it.source.split("/")[0]
            assert same_class == (it.kind != "cross_class_copy"), it
            assert same_split == (it.kind != "cross_split_copy"), it


def test_reencodes_decode_to_identical_pixels(planted) -> None:  # noqa: ANN001
    root, gt = planted
    for it in gt.items:
        if it.category == "reencode":
            assert (root / it.path).read_bytes() != (root / it.source).read_bytes()
            np.testing.assert_array_equal(_rgb(root / it.path), _rgb(root / it.source), err_msg=it.path)


def test_reencodes_decode_identically_with_dali(planted) -> None:  # noqa: ANN001
    """The pipeline decodes with DALI: re-encodes must be pixel-identical there too."""
    dali = pytest.importorskip("nvidia.dali")
    root, gt = planted
    pairs = [(it.path, it.source) for it in gt.items if it.category == "reencode"]
    feed = [np.frombuffer((root / p).read_bytes(), np.uint8) for pair in pairs for p in pair]

    @dali.pipeline_def(batch_size=len(feed), num_threads=1, device_id=None, exec_async=False,
                       exec_pipelined=False, prefetch_queue_depth=1)
    def pipe():  # noqa: ANN202
        enc = dali.fn.external_source(source=lambda: feed, batch=True, dtype=dali.types.UINT8)
        return dali.fn.decoders.image(enc, device="cpu", output_type=dali.types.RGB)

    p = pipe()
    p.build()
    (out,) = p.run()
    for k, (path, _) in enumerate(pairs):
        np.testing.assert_array_equal(np.asarray(out[2 * k]), np.asarray(out[2 * k + 1]), err_msg=path)


def test_near_duplicates_differ_in_pixels(planted) -> None:  # noqa: ANN001
    root, gt = planted
    for it in gt.items:
        if it.category == "near":
            a, b = _rgb(root / it.path), _rgb(root / it.source)
            assert a.shape != b.shape or not np.array_equal(a, b), it
            expect = {"resize_90": (29, 29, 3), "upscale_2x": (64, 64, 3), "crop_5": (30, 30, 3)}
            if it.kind in expect:
                assert a.shape == expect[it.kind], it
            else:
                assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 40


def test_expected_groups(planted) -> None:  # noqa: ANN001
    _, gt = planted
    levels = {lv: gt.expected_groups(lv) for lv in ("bytes", "pixels", "near")}
    assert [len(levels[lv]) for lv in levels] == [15, 23, 23 + 2 * len(NEAR_KINDS)]  # digits: no pre-existing duplicates
    assert gt.preexisting_groups == []
    for small, big in (("bytes", "pixels"), ("pixels", "near")):
        assert set(levels[small]) <= set(levels[big])
    for group in levels["near"]:
        assert len(group) == 2 and len(group & set(gt.originals)) == 1
    invalid = gt.invalid_paths()
    assert sorted(Counter(invalid.values()).items()) == sorted((k, 2) for k in INVALID_KINDS)
    assert not set(invalid) & set().union(*levels["near"])
    with pytest.raises(ValueError):
        gt.expected_groups("fuzzy")  # type: ignore[arg-type]


def test_preexisting_duplicates_are_grouped_and_merged(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 6, 6), dtype=np.uint8)
    labels = np.arange(40) % 4
    images[[5, 10]] = images[1]  # 1, 5 and 10 are identical; 10 has another label (2) than 1 and 5
    images[2] = images[3]
    gt = plant_dataset(images, labels, tmp_path, n_byte_copies=3)
    trio = ["1/img_000001.png", "1/img_000005.png", "2/img_000010.png"]
    assert gt.preexisting_groups == [trio, ["2/img_000002.png", "3/img_000003.png"]]
    assert (tmp_path / trio[0]).read_bytes() == (tmp_path / trio[2]).read_bytes()
    # A hand-made truth: a near dup of #5 and a copy of #3 merge into the pre-existing groups.
    gt.items = [PlantedItem("1/x.png", "near", "shift_1px", "1/img_000005.png"),
                PlantedItem("3/y.png", "copy", "byte_copy", "3/img_000003.png")]
    assert gt.expected_groups("near") == [
        frozenset(trio + ["1/x.png"]), frozenset({"2/img_000002.png", "3/img_000003.png", "3/y.png"})]
    assert gt.expected_groups("bytes")[0] == frozenset(trio)


def test_seeded_runs_reproduce_exactly(digits, planted, tmp_path) -> None:  # noqa: ANN001
    root, gt = planted
    gt2 = plant_dataset(*digits, tmp_path, **PLANT)
    assert gt2 == gt
    for p in list(gt.originals)[::50] + [it.path for it in gt.items]:
        assert (tmp_path / p).read_bytes() == (root / p).read_bytes(), p
    other = plant_dataset(*(a[:300] for a in digits), tmp_path / "other", n_near=6, seed=8)
    assert [it.source for it in other.items] != [it.source for it in
                                                 plant_dataset(*(a[:300] for a in digits), tmp_path / "o2", n_near=6, seed=7).items]


def test_ground_truth_json_roundtrip(planted, tmp_path) -> None:  # noqa: ANN001
    _, gt = planted
    gt.to_json(tmp_path / "truth.json")
    back = GroundTruth.from_json(tmp_path / "truth.json")
    assert back == gt and back.expected_groups() == gt.expected_groups()


def test_no_split_layout_and_bad_arguments(digits, tmp_path) -> None:  # noqa: ANN001
    images, labels = digits
    gt = plant_dataset(images[:50], labels[:50], tmp_path, class_names=[f"c{k}" for k in range(10)],
                       n_byte_copies=2, n_cross_class_copies=2)
    assert gt.splits is None and all(p.count("/") == 1 and p.startswith("c") for p in gt.originals)
    assert {it.kind for it in gt.items} == {"byte_copy", "cross_class_copy"}
    with pytest.raises(ValueError, match="distinct sources"):
        plant_dataset(images[:10], labels[:10], tmp_path / "a", n_byte_copies=10)
    with pytest.raises(ValueError, match="folder-safe"):
        plant_dataset(images[:10], labels[:10], tmp_path / "b", class_names=["a/b"] * 10)
    with pytest.raises(ValueError, match="unknown kinds"):
        plant_dataset(images[:10], labels[:10], tmp_path / "c", n_near={"sharpen": 1})
    with pytest.raises(ValueError, match="uint8"):
        plant_dataset(images.astype(np.float32), labels, tmp_path / "d")


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"apt-get install {FASHION_MNIST_DEBIAN_PACKAGE}")
def test_load_fashion_mnist() -> None:
    images, labels = load_fashion_mnist(split="all")
    assert images.shape == (70_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (70_000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [7000] * len(FASHION_MNIST_CLASSES)
    test_images, test_labels = load_fashion_mnist(FASHION, split="test")
    assert test_images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(test_images, images[60_000:])
    np.testing.assert_array_equal(test_labels, labels[60_000:])


def test_load_fashion_mnist_missing(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match=FASHION_MNIST_DEBIAN_PACKAGE):
        load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(tmp_path, split="validation")  # type: ignore[arg-type]
