"""The input pipelines on small real image files, and on the installed Fashion-MNIST."""
import gzip
import os

import numpy as np
import pytest
from PIL import Image

from data_images import noisy, solid, truncate, write_high_depth, write_idx, write_image, write_tree
from src.context import UserError
from src.dataset import (FASHION_MNIST_DIR, IMAGENET_MEAN, IMAGENET_STD, class_names, count_images,
                         create_dataset, fashion_mnist_folder, num_classes_of, numpy_batches,
                         pixel_transforms, preprocess_image_file, readable_class_names, resize_size)

ORANGE = (200, 100, 50)


def batches(dataset, path=None):
    return list(numpy_batches(dataset, path))


def normalized(value, channel):
    return (value - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def pixels(image):
    """A normalized CHW image back to HWC uint8."""
    return np.rint(image.transpose(1, 2, 0) * IMAGENET_STD + np.array(IMAGENET_MEAN)).astype(np.uint8)


@pytest.fixture(scope="module")
def formats_tree(tmp_path_factory):
    """Seven images of every supported kind in three classes, created in unsorted order."""
    root = str(tmp_path_factory.mktemp("formats"))
    return write_tree(root, {
        "emu/palette.png": (solid(ORANGE), "P"),
        "emu/gray.PNG": (solid(ORANGE), "L"),
        "cat/rgb.JPEG": (solid(ORANGE), "RGB"),
        "cat/rgb.jpg": (noisy(1), "RGB"),
        "dog/gray.jpeg": (solid(ORANGE), "L"),
        "dog/cmyk.JPEG": (solid(ORANGE), "CMYK"),
        "dog/rgba.png": (solid(ORANGE), "RGBA"),
    })


def test_every_format_loads_with_sorted_labels_and_keeps_the_partial_batch(formats_tree):
    dataset = create_dataset("imagefolder", formats_tree, "val", batch_size=3, image_size=32)
    result = batches(dataset)
    assert [len(labels) for _, labels in result] == [3, 3, 1]
    images = np.concatenate([images for images, _ in result])
    labels = np.concatenate([labels for _, labels in result])
    assert images.shape == (7, 3, 32, 32) and images.dtype == np.float32
    assert labels.dtype == np.int32 and labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert np.isfinite(images).all()
    assert class_names("imagefolder", formats_tree) == ["cat", "dog", "emu"]
    assert num_classes_of("imagefolder", formats_tree) == 3
    assert count_images("imagefolder", formats_tree) == 7


def test_cmyk_and_alpha_images_decode_to_their_rgb_colour(tmp_path):
    write_tree(str(tmp_path), {"a/cmyk.jpg": (solid(ORANGE), "CMYK"), "a/rgba.png": (solid(ORANGE), "RGBA"),
                               "a/rgb.jpg": (solid(ORANGE), "RGB")})
    images, _ = batches(create_dataset("imagefolder", str(tmp_path), "val", batch_size=3, image_size=16))[0]
    for image in images:
        for channel, value in enumerate(ORANGE):
            # JPEG is lossy: within 3 grey levels of the true colour.
            assert abs(image[channel].mean() - normalized(value, channel)) < 3 / IMAGENET_STD[channel]


def test_eval_is_deterministic_and_unshuffled(formats_tree):
    first = batches(create_dataset("imagefolder", formats_tree, "val", batch_size=2, image_size=16))
    second = batches(create_dataset("imagefolder", formats_tree, "val", batch_size=2, image_size=16))
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)


def test_solid_colour_normalizes_to_the_imagenet_statistics(tmp_path):
    write_image(str(tmp_path / "a" / "solid.png"), solid((255, 128, 0), size=(300, 200)))
    (images, _), = batches(create_dataset("imagefolder", str(tmp_path), "val", batch_size=1))
    assert images.shape == (1, 3, 224, 224)
    for channel, value in enumerate((255, 128, 0)):
        np.testing.assert_allclose(images[0, channel], normalized(value, channel), rtol=1e-6)


def test_eval_resizes_the_shorter_side_to_256_then_center_crops_224(tmp_path):
    # Pixel value = column index: a 256x256 image is not resized, the crop starts at column 16.
    gradient = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    write_image(str(tmp_path / "a" / "exact.png"), gradient)
    # Twice as large: resized down to 256 first, so the crop shows nearly the same values.
    write_image(str(tmp_path / "b" / "double.png"), np.repeat(np.repeat(gradient, 2, axis=0), 2, axis=1))
    (images, _), = batches(create_dataset("imagefolder", str(tmp_path), "val", batch_size=2))
    assert resize_size(224) == 256
    expected = normalized(np.arange(16, 240, dtype=np.float32), 0)
    np.testing.assert_allclose(images[0, 0, 100], expected, rtol=1e-5)
    np.testing.assert_allclose(images[1, 0, 100], expected, atol=1.0 / IMAGENET_STD[0])


def test_other_image_sizes_keep_the_crop_ratio(formats_tree):
    assert resize_size(64) == 73
    (images, _), = batches(create_dataset("imagefolder", formats_tree, "val", batch_size=8, image_size=64))
    assert images.shape == (7, 3, 64, 64)


def test_small_images_are_evaluated_whole_and_trained_on_shifted_flipped_copies(tmp_path):
    image = np.asarray(noisy(2, size=(32, 32)))
    for i in range(6):
        write_image(str(tmp_path / "a" / f"{i}.png"), image)
    (whole, _), = batches(create_dataset("imagefolder", str(tmp_path), "val", batch_size=6, image_size=32))
    np.testing.assert_array_equal(pixels(whole[0]), image)
    (augmented, _), = batches(create_dataset("imagefolder", str(tmp_path), "train", batch_size=6, image_size=32))
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))  # shifts of up to 32 // 8 pixels, zero fill
    shifted = [padded[y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
    candidates = shifted + [copy[:, ::-1] for copy in shifted]
    for copy in augmented:
        assert any(np.array_equal(pixels(copy), candidate) for candidate in candidates)
    assert len({pixels(copy).tobytes() for copy in augmented}) > 1
    (plain, _), = batches(create_dataset("imagefolder", str(tmp_path), "train", batch_size=6, image_size=32,
                                         augment=False))
    for copy in plain:
        np.testing.assert_array_equal(pixels(copy), image)


def test_preprocess_image_file_matches_the_pipeline(formats_tree):
    (images, _), = batches(create_dataset("imagefolder", formats_tree, "val", batch_size=8, image_size=32))
    single = preprocess_image_file(os.path.join(formats_tree, "cat", "rgb.jpg"), "imagefolder", 32)
    assert any(np.array_equal(single, image) for image in images)


@pytest.mark.parametrize("mode,ext", [("I;16", ".png"), ("I;16", ".tif"), ("I", ".tif"), ("F", ".tif")])
def test_high_depth_images_decode_like_their_8_bit_copy(tmp_path, mode, ext):
    pixels = np.asarray(noisy(4).convert("L"))
    eight = write_image(str(tmp_path / "a" / "eight.png"), pixels, "L")
    deep = write_high_depth(str(tmp_path / "deep" / f"deep{ext}"), pixels, mode)
    for name in ("fashion_mnist", "imagefolder"):
        np.testing.assert_array_equal(preprocess_image_file(deep, name, 32), preprocess_image_file(eight, name, 32))


def test_the_pipeline_decodes_16_bit_pngs_like_predict(tmp_path):
    pixels = np.asarray(noisy(5).convert("L"))
    write_image(str(tmp_path / "a" / "eight.png"), pixels, "L")
    deep = write_high_depth(str(tmp_path / "b" / "deep.png"), pixels, "I;16")
    (images, labels), = batches(create_dataset("imagefolder", str(tmp_path), "val", batch_size=2, image_size=32))
    assert labels.tolist() == [0, 1]
    np.testing.assert_array_equal(images[1], images[0])
    np.testing.assert_array_equal(images[1], preprocess_image_file(deep, "imagefolder", 32))


def test_float_pixels_outside_0_to_1_are_refused(tmp_path):
    file = str(tmp_path / "hdr.tif")
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(file)
    with pytest.raises(UserError, match=r"cannot decode .*hdr.tif: F pixels from 3.5 to 3.5 lie outside 0..1"):
        preprocess_image_file(file, "imagefolder")


def test_shards_split_the_images_disjointly(tmp_path):
    for i in range(8):
        write_image(str(tmp_path / f"class{i % 2}" / f"{i}.png"), solid((i * 30,) * 3, size=(16, 16)))
    seen = []
    for shard in range(2):
        dataset = create_dataset("imagefolder", str(tmp_path), "val", batch_size=8, image_size=8,
                                 num_shards=2, shard_id=shard)
        (images, _), = batches(dataset)
        seen.append({round(float(v)) for v in images[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]})
    assert len(seen[0]) == len(seen[1]) == 4
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == {i * 30 for i in range(8)}


def test_train_pipeline_augments_and_drops_the_partial_batch(formats_tree):
    result = batches(create_dataset("imagefolder", formats_tree, "train", batch_size=3, image_size=24))
    assert [images.shape for images, _ in result] == [(3, 3, 24, 24)] * 2


@pytest.mark.parametrize("layout, message", [
    ("missing", "dataset folder not found"),
    ("empty", "no class folders"),
    ("loose", "one sub-folder per class"),
    ("no_images", "no image files"),
])
def test_bad_folders_are_user_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "loose":
        write_image(str(root / "a.jpg"), solid(ORANGE))
    if layout == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=message):
        create_dataset("imagefolder", str(root), "val", batch_size=2)


def test_imagenet_refuses_folders_that_are_not_synsets(formats_tree):
    with pytest.raises(UserError, match="3 class folders that are not ImageNet-1k synsets .*--dataset imagefolder"):
        create_dataset("imagenet", formats_tree, "val", batch_size=2)
    with pytest.raises(UserError, match="not ImageNet-1k synsets"):
        num_classes_of("imagenet", formats_tree)


# Three ImageNet-1k classes far from the first ones, with their canonical indices.
SUBSET = {"n01530575": 10, "n04554684": 897, "n15075141": 999}


def test_imagenet_subset_gets_the_canonical_labels(tmp_path):
    for synset in SUBSET:
        write_image(str(tmp_path / synset / "a.png"), solid(ORANGE, size=(8, 8)))
    (_, labels), = batches(create_dataset("imagenet", str(tmp_path), "val", batch_size=4, image_size=8))
    assert labels.tolist() == sorted(SUBSET.values())
    assert num_classes_of("imagenet", str(tmp_path)) == 1000 and count_images("imagenet", str(tmp_path)) == 3
    names = class_names("imagenet")
    assert len(names) == 1000 and names == sorted(names) and [names[i] for i in SUBSET.values()] == list(SUBSET)
    assert readable_class_names(["n01440764", "n15075141", "cat"]) == [
        "tench, Tinca tinca", "toilet tissue, toilet paper, bathroom tissue", "cat"]


def test_given_classes_label_folders_by_name(tmp_path):
    for name in ("c", "b"):
        write_image(str(tmp_path / "some" / name / "x.png"), solid(ORANGE, size=(8, 8)))
    write_image(str(tmp_path / "other" / "d" / "x.png"), solid(ORANGE, size=(8, 8)))
    dataset = create_dataset("imagefolder", str(tmp_path / "some"), "val", batch_size=4, image_size=8,
                             classes=["a", "b", "c"], classes_from="the checkpoint x.ckpt")
    (_, labels), = batches(dataset)
    assert labels.tolist() == [1, 2]
    with pytest.raises(UserError, match=r"folders d are not among the 3 classes of the checkpoint x.ckpt \(a, b, c\)"):
        count_images("imagefolder", str(tmp_path / "other"), "val", ["a", "b", "c"], "the checkpoint x.ckpt")
    with pytest.raises(UserError, match="Fashion-MNIST's classes are T-shirt/top"):
        create_dataset("fashion_mnist", None, "val", classes=["a", "b", "c"], classes_from="the checkpoint x.ckpt")


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_a_corrupt_image_is_named(tmp_path, damage):
    write_tree(str(tmp_path), {"a/good.jpg": (noisy(2), "RGB"), "b/bad.JPEG": (noisy(3), "RGB")})
    bad = str(tmp_path / "b" / "bad.JPEG")
    if damage == "truncated":
        truncate(bad)  # MindSpore's C++ decoder would kill the process here (SIGFPE)
    else:
        with open(bad, "w") as handle:
            handle.write("<html>404</html>")
    dataset = create_dataset("imagefolder", str(tmp_path), "val", batch_size=1, image_size=16)
    with pytest.raises(UserError, match=f"cannot decode {bad}"):
        batches(dataset, str(tmp_path))


def test_fashion_mnist_test_split_is_complete_and_in_file_order():
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as handle:
        file_labels = np.frombuffer(handle.read()[8:], np.uint8)
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as handle:
        first_image = np.frombuffer(handle.read()[16:16 + 784], np.uint8).reshape(28, 28)
    result = batches(create_dataset("fashion_mnist", None, "val", batch_size=3000))
    labels = np.concatenate([labels for _, labels in result])
    images = result[0][0]
    assert [len(batch) for _, batch in result] == [3000, 3000, 3000, 1000]
    assert images.shape[1:] == (1, 28, 28) and images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, file_labels)
    np.testing.assert_allclose(images[0, 0], (first_image - 0.2860 * 255) / (0.3530 * 255), rtol=1e-5)
    assert num_classes_of("fashion_mnist") == 10 and len(class_names("fashion_mnist")) == 10


def test_fashion_mnist_train_split():
    assert count_images("fashion_mnist", None, "train") == 60000
    assert count_images("fashion_mnist", None, "val") == 10000
    dataset = create_dataset("fashion_mnist", None, "train", batch_size=256)
    assert dataset.get_dataset_size() == 60000 // 256
    images, labels = next(numpy_batches(dataset))
    assert images.shape == (256, 1, 28, 28) and labels.min() >= 0 and labels.max() <= 9
    kinds = [type(op).__name__ for op in pixel_transforms("fashion_mnist", "train", augment=False)]
    assert kinds == [type(op).__name__ for op in pixel_transforms("fashion_mnist", "val")]
    assert {"RandomCrop", "RandomHorizontalFlip"} <= {type(op).__name__ for op in pixel_transforms("fashion_mnist",
                                                                                                 "train")}


def test_fashion_mnist_gz_files_are_decompressed_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = fashion_mnist_folder()
    assert folder.startswith(str(tmp_path / "bimlp" / "fashion-mnist"))
    stamp = os.stat(os.path.join(folder, "train-images-idx3-ubyte"))
    assert stamp.st_size == 16 + 60000 * 28 * 28
    assert fashion_mnist_folder() == folder
    assert os.stat(os.path.join(folder, "train-images-idx3-ubyte")).st_mtime_ns == stamp.st_mtime_ns


def test_uncompressed_idx_files_are_read_in_place(tmp_path):
    images = np.arange(5 * 28 * 28, dtype=np.uint32).reshape(5, 28, 28) % 256
    write_idx(str(tmp_path), "train", images, [1, 2, 3, 4, 5])
    write_idx(str(tmp_path), "test", images[:3], [7, 8, 9])
    assert fashion_mnist_folder(str(tmp_path)) == str(tmp_path)
    (batch, labels), = batches(create_dataset("fashion_mnist", str(tmp_path), "val", batch_size=4))
    assert labels.tolist() == [7, 8, 9] and batch.shape == (3, 1, 28, 28)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        create_dataset("fashion_mnist", str(tmp_path), "val", batch_size=4)


def test_bad_arguments_are_user_errors(formats_tree):
    with pytest.raises(UserError, match="batch size"):
        create_dataset("imagefolder", formats_tree, "val", batch_size=0)
    with pytest.raises(UserError, match="image size"):
        create_dataset("imagefolder", formats_tree, "val", batch_size=2, image_size=0)
    with pytest.raises(UserError, match="unknown dataset"):
        create_dataset("cifar", formats_tree, "val", batch_size=2)
    with pytest.raises(UserError, match="unknown split"):
        create_dataset("imagefolder", formats_tree, "test", batch_size=2)


def test_truncated_or_mismatched_idx_files_are_clear_errors(tmp_path):
    images = np.zeros((6, 28, 28), np.uint8)
    write_idx(str(tmp_path), "train", images, [0] * 6)
    write_idx(str(tmp_path), "test", images[:2], [0, 1, 2])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte holds 2 images but t10k-labels-idx1-ubyte 3 labels"):
        create_dataset("fashion_mnist", str(tmp_path), "val", batch_size=2)
    write_idx(str(tmp_path), "test", images[:2], [0, 1])
    file = tmp_path / "train-images-idx3-ubyte"
    file.write_bytes(file.read_bytes()[:2000])  # an interrupted download
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte is truncated or damaged: 2000 bytes, "
                                        r"its header promises 4720"):
        count_images("fashion_mnist", str(tmp_path), "train")


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with pytest.raises(UserError, match=f"{tmp_path / 'file'} is a file, not a folder"):
        fashion_mnist_folder()
