"""The data layer: registry names, file datasets (imagefolder, csv), splits, image reading, built-in datasets.

File datasets are built from tiny PNG/TIFF/JPEG files written into ``tmp_path`` with PIL, so the tests are
hermetic; Fashion-MNIST tests are skipped when the Debian files are absent.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_student.config import DataConfig
from robust_student.data import build_dataset, list_datasets
from robust_student.data.files import CorruptImageError, read_image

SPLITS = ("train", "val", "test")
CRC_CLASSES = ("TUM", "ADI", "NORM")  # deliberately unsorted


def write_image(path: Path, seed: int, size: tuple[int, int] = (10, 12), mode: str = "RGB") -> np.ndarray:
    """Write a random image of ``size`` (W, H) and return its pixels."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def make_folder(root: Path, classes=CRC_CLASSES, n: int = 20, ext: str = ".png", start: int = 0) -> Path:
    for k, name in enumerate(classes):
        for i in range(n):
            write_image(root / name / f"{name.lower()}_{start + i:03d}{ext}", seed=1000 * k + start + i)
    return root


def split_files(spec: str, **options) -> dict[str, list[Path]]:
    return {s: build_dataset(spec, s, **options).files for s in SPLITS}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


# -- registry ---------------------------------------------------------------------------------------------


def test_list_datasets_gives_plain_names_and_the_registry_says_how_to_write_them():
    from robust_student.data import DATASETS

    assert {"imagefolder", "csv", "fashion-mnist", "synthetic"} <= set(list_datasets())
    assert DATASETS.usage("imagefolder") == "imagefolder:PATH"
    assert DATASETS.usage("synthetic") == "synthetic[:N_CLASSES]"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="imagefolder:PATH") as info:
        build_dataset("imagefoldr", "train")
    assert "csv:PATH" in str(info.value) and "Did you mean 'imagefolder'" in str(info.value)
    with pytest.raises(ValueError, match="needs an argument"):
        build_dataset("imagefolder", "train")


# -- imagefolder splits -----------------------------------------------------------------------------------


def test_imagefolder_split_is_seeded_disjoint_complete_stratified_70_15_15(tmp_path):
    root = make_folder(tmp_path / "crc", n=20)
    spec = f"imagefolder:{root}"
    first, again = split_files(spec), split_files(spec)
    assert first == again  # same seed, same split and order
    sets = {s: set(files) for s, files in first.items()}
    assert all(len(sets[s]) == len(first[s]) for s in SPLITS)  # no duplicates inside a split
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(root.glob("*/*.png"))
    assert [len(first[s]) for s in SPLITS] == [42, 9, 9]
    for s, per_class in zip(SPLITS, (14, 3, 3)):  # stratified: every class split 70/15/15
        assert Counter(build_dataset(spec, s).targets()) == {0: per_class, 1: per_class, 2: per_class}
    assert split_files(spec, seed=1)["test"] != first["test"]


def test_uneven_classes_split_close_to_70_15_15(tmp_path):
    make_folder(tmp_path / "a", classes=("x",), n=13)
    make_folder(tmp_path / "a", classes=("y",), n=7)
    make_folder(tmp_path / "a", classes=("z",), n=31)
    sizes = [len(files) for files in split_files(f"imagefolder:{tmp_path / 'a'}").values()]
    assert sum(sizes) == 51
    assert all(abs(size - fraction * 51) <= 3 for size, fraction in zip(sizes, (0.7, 0.15, 0.15)))  # 1 per class


def test_imagefolder_order_is_shuffled_so_a_prefix_is_not_one_class(tmp_path):
    dataset = build_dataset(f"imagefolder:{make_folder(tmp_path / 'crc', n=20)}", "train")
    assert len(set(dataset.targets()[:10])) > 1


def test_class_split_does_not_depend_on_other_classes(tmp_path):
    make_folder(tmp_path / "two", classes=("ADI", "TUM"))
    make_folder(tmp_path / "three", classes=("ADI", "TUM", "NORM"))
    two = [f.name for f in build_dataset(f"imagefolder:{tmp_path / 'two'}", "test").files if "adi" in f.name]
    three = [f.name for f in build_dataset(f"imagefolder:{tmp_path / 'three'}", "test").files if "adi" in f.name]
    assert sorted(two) == sorted(three)


def test_explicit_split_folders_are_honoured(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", classes=("b", "a"), n=4)
    make_folder(root / "val", classes=("a",), n=2, start=10)
    make_folder(root / "test", classes=("a", "c"), n=3, start=20)
    for split in SPLITS:
        dataset = build_dataset(f"imagefolder:{root}", split)
        assert dataset.labels == ["a", "b", "c"]  # the union of class folders, sorted, same in every split
        assert sorted(dataset.files) == sorted((root / split).glob("*/*.png"))
        assert all(dataset.labels[t] == f.parent.name for f, t in zip(dataset.files, dataset.targets()))


def test_training_and_testing_folders_with_val_carved_from_train(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "Training", classes=("x", "y"), n=20)
    make_folder(root / "testing", classes=("x", "y"), n=5, start=50)
    files = split_files(f"imagefolder:{root}")
    assert sorted(files["test"]) == sorted((root / "testing").glob("*/*.png"))
    assert [len(files["train"]), len(files["val"])] == [34, 6]  # 15% of each class of Training
    assert not set(files["train"]) & set(files["val"])
    assert set(files["train"]) | set(files["val"]) == set((root / "Training").glob("*/*.png"))


def test_split_folders_without_train_raise(tmp_path):
    make_folder(tmp_path / "data" / "test", classes=("a",), n=2)
    with pytest.raises(ValueError, match="no train"):
        build_dataset(f"imagefolder:{tmp_path / 'data'}", "test")


# -- image reading ----------------------------------------------------------------------------------------


def test_items_are_float_chw_in_unit_range_with_int_labels(tmp_path):
    pixels = write_image(tmp_path / "data" / "cat" / "a.png", seed=0, size=(10, 12))
    item = build_dataset(f"imagefolder:{tmp_path / 'data'}", "train")[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 12, 10)
    assert isinstance(item["label"], int) and item["label"] == 0
    assert torch.equal(item["image"], torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    pixels = write_image(tmp_path / "data" / "xray" / "a.png", seed=0, mode="L")
    image = build_dataset(f"imagefolder:{tmp_path / 'data'}", "train")[0]["image"]
    assert image.shape == (3, 12, 10)
    expected = torch.from_numpy(pixels).float() / 255
    assert all(torch.equal(image[c], expected) for c in range(3))


def test_sixteen_bit_images_scale_by_65535(tmp_path):
    values = np.array([[0, 1000, 30000], [40000, 65535, 7]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "x.png")
    Image.fromarray(values).save(tmp_path / "x.tif")
    for name in ("x.png", "x.tif"):
        image = read_image(tmp_path / name)
        assert image.shape == (1, 2, 3)
        torch.testing.assert_close(image[0], torch.from_numpy(values.astype(np.float32) / 65535))


def test_resizing_to_image_size(tmp_path):
    root = tmp_path / "data"
    write_image(root / "a" / "big.png", seed=0, size=(40, 30))
    write_image(root / "a" / "photo.JPG", seed=1, size=(64, 48))
    write_image(root / "a" / "scan.tiff", seed=2, size=(33, 33), mode="L")
    shapes = {}
    for split in SPLITS:
        dataset = build_dataset(f"imagefolder:{root}", split, image_size=8)
        shapes.update({f.name: dataset[i]["image"].shape for i, f in enumerate(dataset.files)})
    assert shapes == {name: (3, 8, 8) for name in ("big.png", "photo.JPG", "scan.tiff")}
    Image.new("RGB", (50, 70), (51, 102, 204)).save(root / "a" / "flat.bmp")  # a flat image stays flat
    torch.testing.assert_close(read_image(root / "a" / "flat.bmp", 8),
                               torch.tensor([0.2, 0.4, 0.8])[:, None, None].expand(3, 8, 8), atol=1e-6, rtol=0)


def test_corrupt_image_raises_naming_the_file(tmp_path):
    path = tmp_path / "data" / "a" / "broken.png"
    write_image(path, seed=0)
    truncate(path)
    dataset = build_dataset(f"imagefolder:{tmp_path / 'data'}", "train")
    with pytest.raises(CorruptImageError, match="broken.png") as info:
        dataset[0]
    assert isinstance(info.value, ValueError) and info.value.path == path


def test_skip_corrupt_drops_counts_and_warns_once(tmp_path, caplog):
    root = make_folder(tmp_path / "crc", n=20)
    truncate(root / "TUM" / "tum_003.png")
    (root / "ADI" / "adi_007.png").write_bytes(b"not an image")
    caplog.set_level(logging.WARNING, logger="robust_student")
    built = {s: build_dataset(f"imagefolder:{root}", s, skip_corrupt=True) for s in SPLITS}
    assert sum(d.num_skipped for d in built.values()) == 2
    assert sum(len(d) for d in built.values()) == 58
    skipped = {f.name for d in built.values() for f in d.skipped_files}
    assert skipped == {"tum_003.png", "adi_007.png"}
    for dataset in built.values():
        dataset[len(dataset) - 1]  # what is left is readable
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len([d for d in built.values() if d.num_skipped])
    assert all("skipped" in w for w in warnings)
    assert any("tum_003.png" in w for w in warnings) and any("adi_007.png" in w for w in warnings)


def test_missing_and_empty_folders_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(f"imagefolder:{tmp_path / 'nowhere'}", "train")
    make_folder(tmp_path / "data", classes=("a",), n=2)
    (tmp_path / "data" / "empty").mkdir()
    (tmp_path / "data" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty.*hold no images"):
        build_dataset(f"imagefolder:{tmp_path / 'data'}", "train")
    write_image(tmp_path / "flat" / "loose.png", seed=0)
    with pytest.raises(ValueError, match="no class folders"):
        build_dataset(f"imagefolder:{tmp_path / 'flat'}", "train")


# -- prompts ----------------------------------------------------------------------------------------------


def test_crc100k_folder_names_pick_the_crc100k_prompts(tmp_path):
    dataset = build_dataset(f"imagefolder:{make_folder(tmp_path / 'crc', n=3)}", "test")
    assert dataset.labels == ["ADI", "NORM", "TUM"]
    assert dataset.prompts.name == "crc100k"
    assert dataset.prompts.classnames[0][0] == "adipose tissue"
    assert dataset.prompts.classnames[2][0] == "colorectal adenocarcinoma epithelium"
    generic = build_dataset(f"imagefolder:{make_folder(tmp_path / 'pets', classes=('dog', 'cat'), n=3)}", "test")
    assert generic.prompts.name == "generic" and generic.prompts.classnames == (("cat",), ("dog",))


# -- csv:PATH ---------------------------------------------------------------------------------------------


def write_rsna(root: Path, n: int = 20) -> Path:
    """An RSNA-style labels CSV (one row per box) and grayscale PNGs named by patientId in images/."""
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        pid = f"p{i:04x}-id"
        write_image(root / "images" / f"{pid}.png", seed=i, mode="L")
        target = i % 2
        boxes = 2 if target and i % 4 == 1 else 1
        lines += [f"{pid},{'10,10,5,5' if target else ',,,'},{target}"] * boxes
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_csv_rsna_layout(tmp_path):
    csv_path = write_rsna(tmp_path, n=40)
    spec = f"csv:{csv_path}"
    built = {s: build_dataset(spec, s, images_dir="images") for s in SPLITS}
    assert [len(built[s]) for s in SPLITS] == [28, 6, 6]  # one image per patient, split 70/15/15
    files = [f for d in built.values() for f in d.files]
    assert sorted(files) == sorted((tmp_path / "images").glob("*.png"))
    dataset = built["train"]
    assert dataset.labels == ["0", "1"] and dataset.prompts.name == "rsna-pneumonia"
    assert dataset.prompts.classnames[1] == ("Findings suggesting pneumonia",)
    assert all(int(f.stem[1:5], 16) % 2 == t for f, t in zip(dataset.files, dataset.targets()))
    assert dataset[0]["image"].shape == (3, 12, 10)
    assert build_dataset(spec, "test", images_dir="images").files == built["test"].files  # seeded


def test_csv_conflicting_duplicate_labels_raise(tmp_path):
    write_image(tmp_path / "a.png", seed=0)
    (tmp_path / "labels.csv").write_text("patientId,Target\na,0\na,1\n")
    with pytest.raises(ValueError, match="conflicting labels"):
        build_dataset(f"csv:{tmp_path / 'labels.csv'}", "train")


def test_csv_string_labels_explicit_columns_and_split_column(tmp_path):
    rows = ["name,diagnosis,split"]
    for i, (label, split) in enumerate([("normal", "train"), ("opacity", "train"), ("normal", "val"),
                                        ("opacity", "test"), ("normal", "test")]):
        write_image(tmp_path / "imgs" / f"{i}.jpg", seed=i)
        rows.append(f"imgs/{i}.jpg,{label},{split}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    spec = f"csv:{tmp_path / 'data.csv'}"
    with pytest.raises(ValueError, match="image_column"):
        build_dataset(spec, "train")
    sizes = {}
    for split in SPLITS:
        dataset = build_dataset(spec, split, image_column="name", label_column="diagnosis")
        assert dataset.labels == ["normal", "opacity"] and dataset.prompts.name == "generic"
        sizes[split] = sorted(f.name for f in dataset.files)
    assert sizes == {"train": ["0.jpg", "1.jpg"], "val": ["2.jpg"], "test": ["3.jpg", "4.jpg"]}


def test_csv_numeric_labels_sort_numerically_and_missing_images_are_named(tmp_path):
    lines = ["file,label"]
    for i, label in enumerate(["10", "2", "2.0", "10", "3"]):
        write_image(tmp_path / f"{i}.png", seed=i)
        lines.append(f"{i},{label}")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    dataset = build_dataset(f"csv:{tmp_path / 'data.csv'}", "train")
    assert dataset.labels == ["2", "3", "10"]
    (tmp_path / "data.csv").write_text("file,label\n0,1\nghost,0\n")
    with pytest.raises(FileNotFoundError, match="ghost"):
        build_dataset(f"csv:{tmp_path / 'data.csv'}", "train")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        build_dataset(f"csv:{tmp_path / 'missing.csv'}", "train")


# -- built-in datasets and DataConfig ---------------------------------------------------------------------


def test_fashion_mnist_official_split_with_seeded_val():
    from robust_student.data import fashion_mnist as fm

    try:
        root = fm.find_root(None)
    except FileNotFoundError as err:
        pytest.skip(f"Fashion-MNIST files absent: {err}")
    built = {s: build_dataset("fashion-mnist", s) for s in SPLITS}
    assert [len(built[s]) for s in SPLITS] == [55000, 5000, 10000]
    item = built["val"][0]
    assert item["image"].shape == (3, 28, 28) and 0 <= item["label"] < 10
    assert built["val"].prompts.name == "fashion-mnist"
    official, _ = fm._load_arrays(str(root), "train")

    def rows(images: torch.Tensor) -> Counter:
        return Counter(bytes(row) for row in images.reshape(images.shape[0], -1).numpy())

    # train + val is exactly the official training set as a multiset: disjoint, and nothing lost or repeated
    assert rows(built["train"].images) + rows(built["val"].images) == rows(official)


def test_synthetic_is_seeded():
    a = build_dataset(DataConfig(name="synthetic:3", seed=5), "train")
    b = build_dataset(DataConfig(name="synthetic:3", seed=5), "train")
    c = build_dataset(DataConfig(name="synthetic:3", seed=6), "train")
    assert a.num_classes == 3 and len(a) == 256
    assert torch.equal(a.images, b.images) and a.targets() == b.targets()
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images[:64], build_dataset(DataConfig(name="synthetic:3", seed=5), "val").images)


def test_max_train_examples_limits_only_train(tmp_path):
    root = make_folder(tmp_path / "crc", n=20)
    config = DataConfig(name=f"imagefolder:{root}", max_train_examples=5, image_size=8)
    train = build_dataset(config, "train")
    assert len(train) == 5 and train[4]["image"].shape == (3, 8, 8)
    assert train.prompts.name == "crc100k"
    assert len(build_dataset(config, "val")) == 9
    assert len(build_dataset(DataConfig(name="synthetic", max_train_examples=7), "train")) == 7
