"""Streaming datasets: same samples as torchvision's ImageFolder, file lists, workers, registry."""
import numpy as np
import pytest
import torch

import curvfast
from curvfast.data import get_dataset
from curvfast.data._streaming import FileListDataset, StreamingImageFolder
from curvfast.errors import DataError, UnknownNameError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/<class>/<image> with 3 classes, a nested folder, a non-image file and RGB/L images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet_like")
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["n01", "n02", "n03"]):
        for j in range(3):
            sub = root / cls / ("deep" if j == 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels if j else pixels[..., 0]).save(sub / f"img {c}{j}.png")
        (root / cls / "notes.txt").write_text("not an image")
    return root


def test_image_folder_matches_torchvision(folder):
    from torchvision.datasets import ImageFolder

    ours = StreamingImageFolder(str(folder), image_size=8)
    theirs = ImageFolder(str(folder), transform=ours.transform)
    assert ours.classes == theirs.classes and len(ours) == len(theirs) == 9
    for i in range(len(ours)):
        assert ours.path(i) == theirs.samples[i][0]
        x, y = ours[i]
        x_ref, y_ref = theirs[i]
        assert y == y_ref and x.shape == (3, 8, 8)
        torch.testing.assert_close(x, x_ref, rtol=0, atol=0)


def test_file_list_round_trip_comments_spaces_and_errors(folder, tmp_path):
    ds = StreamingImageFolder(str(folder))
    listing = tmp_path / "train.txt"
    ds.write_filelist(str(listing))
    listing.write_text("# a comment\n\n" + listing.read_text())
    again = FileListDataset(str(listing), root=str(folder))
    assert len(again) == 9 and again.fingerprint() == ds.fingerprint()  # paths with spaces survive
    np.testing.assert_array_equal(again.targets, ds.targets)
    torch.testing.assert_close(again[4][0], ds[4][0], rtol=0, atol=0)
    bad = tmp_path / "bad.txt"
    bad.write_text("n01/a.png 0\nn01/b.png cat\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected"):
        FileListDataset(str(bad))
    relabelled = tmp_path / "relabelled.txt"
    relabelled.write_text(listing.read_text().replace(" 2\n", " 1\n"))
    assert FileListDataset(str(relabelled), root=str(folder)).fingerprint() != ds.fingerprint()


def test_registry_and_worker_processes_give_the_same_scores(folder, tmp_path):
    ds, info = get_dataset("filelist", root=str(folder), image_size=8)
    assert isinstance(ds, StreamingImageFolder) and info.num_classes == 3 and info.in_channels == 3
    StreamingImageFolder(str(folder)).write_filelist(str(folder / "val.txt"))
    listed, _ = get_dataset("filelist", "val", root=str(folder), image_size=8)
    assert isinstance(listed, FileListDataset) and len(listed) == 9
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    inline = curvfast.score(model, listed, method="exact", batch_size=4)
    workers = curvfast.score(model, listed, method="exact", batch_size=4, num_workers=2)
    np.testing.assert_array_equal(workers.score, inline.score)
    np.testing.assert_array_equal(workers.label, ds.targets)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_dataset("filelist", root=str(tmp_path / "nowhere"))


def _write(folder, count=2):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for j in range(count):
        Image.fromarray(np.full((4, 4, 3), 40 * j, dtype=np.uint8)).save(folder / f"{j}.png")


@pytest.mark.parametrize("name", ["imagefolder", "filelist"])
def test_a_missing_split_is_refused_naming_the_folder(tmp_path, name):
    """A folder with train/ but no test/ must not serve the training images as the test set."""
    from curvfast.data import get_dataset

    for cls in ("a", "b"):
        _write(tmp_path / "train" / cls)
    assert len(get_dataset(name, "train", root=str(tmp_path))[0]) == 4
    with pytest.raises(FileNotFoundError, match=r"no 'test' split .* looked for '.*test' \(it has train/\)"):
        get_dataset(name, "test", root=str(tmp_path))


@pytest.mark.parametrize("name", ["imagefolder", "filelist"])
def test_class_folders_alone_are_the_training_split_only(tmp_path, name):
    from curvfast.data import get_dataset

    for cls in ("a", "b"):
        _write(tmp_path / cls)
    assert len(get_dataset(name, "train", root=str(tmp_path))[0]) == 4
    with pytest.raises(FileNotFoundError, match="class folders only"):
        get_dataset(name, "test", root=str(tmp_path))


def test_an_unknown_dataset_name_is_named():
    with pytest.raises(UnknownNameError, match="unknown dataset 'imagenette'; choose one of"):
        get_dataset("imagenette")
