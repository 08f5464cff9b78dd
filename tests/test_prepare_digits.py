"""scripts/prepare_digits.py: its per-class split, and the folder it writes read back by the imagefolder pipeline.

scikit-learn is not a dependency of the package, so the digits come from the test; the
script's own loading is one scikit-learn call.
"""
import importlib.util
import os

import numpy as np
import pytest

from conftest import ROOT
from src.context import UserError
from src.dataset import IMAGENET_MEAN, IMAGENET_STD, class_names, count_images, create_dataset, numpy_batches


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_digits", os.path.join(ROOT, "scripts", "prepare_digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_class_is_split_in_proportion_and_the_folder_reads_back(tmp_path):
    prepare = load_script()
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(3), [8, 4, 12]))
    images = np.tile((np.arange(24, dtype=np.uint8) * 10)[:, None, None], (1, 8, 8))  # grey level = index * 10
    splits = prepare.split_per_class(labels, 0.25, seed=0)
    assert sorted(splits["train"] + splits["val"]) == list(range(24))
    assert np.bincount(labels[splits["val"]]).tolist() == [2, 1, 3]
    prepare.write_folder(str(tmp_path), images, labels, splits)
    assert class_names("imagefolder", str(tmp_path / "train")) == ["0", "1", "2"]
    assert count_images("imagefolder", str(tmp_path / "train")) == 18
    (batch, read_labels), = numpy_batches(create_dataset("imagefolder", str(tmp_path / "val"), "val", batch_size=8,
                                                         image_size=8))
    indices = np.rint((batch[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) / 10).astype(int)
    assert sorted(indices.tolist()) == splits["val"]
    assert read_labels.tolist() == labels[indices].tolist()


@pytest.mark.parametrize("argv, message", [
    (["--val_fraction", "1"], "--val_fraction must be between 0 and 1"),
    ([], "already has train/ and val/"),
])
def test_bad_arguments_are_user_errors_before_any_loading(tmp_path, argv, message):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match=message):
        load_script().main([str(tmp_path), *argv])
