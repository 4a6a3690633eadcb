"""Image folders and file lists under hostile input (issue 30 item 5, its raw-traceback classes) and the split and
resize options of issue 31: symlinks followed only inside the root (resolved paths), loops refused, decompression
bombs, mixed sizes, huge labels and non-UTF-8 names each a one-line error naming the file; ``sample_paths`` and
``class_names`` tie samples to files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from curvfast.data import class_names, get_dataset, printable_path, sample_paths
from curvfast.errors import ConfigError, DataError

KINDS = ["imagefolder", "filelist"]  # filelist on a folder: the streaming scan


def _png(path, size=(4, 4), value=0):
    from PIL import Image

    path = os.fsencode(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(f, format="PNG")


def _classes(root, per_class=2, size=(4, 4)):
    """root/a/0.png, root/a/1.png, root/b/0.png, root/b/1.png."""
    for cls in ("a", "b"):
        for j in range(per_class):
            _png(os.path.join(root, cls, f"{j}.png"), size, 40 * j)


def _get(kind, root, **kw):
    return get_dataset(kind, root=str(root), **kw)[0]


# --- symlinks -------------------------------------------------------------------------------------------------------

LINKS = {  # case -> (link inside root, its target relative to the link's folder, error text or None: accepted)
    "loop to the root": ("b/loop", "..", "symlink loop"),
    "loop to its own class": ("a/sub/again", "..", "symlink loop"),
    "loop to itself": ("a/self", ".", "symlink loop"),
    "class folder outside": ("c", "../outside", "outside the image folder"),
    "file outside": ("a/x.png", "../../outside/o.png", "outside the image folder"),
    "folder outside, deeper": ("a/deep", "../../outside", "outside the image folder"),
    "a class's folder twice": ("a/sub/back", "../deeper", "'a/deeper' again"),
    "file inside": ("a/dup.png", "../b/0.png", None),
    "folder inside": ("a/more", "../b", None),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(LINKS))
def test_symlinks_are_followed_only_inside_the_root(tmp_path, kind, case):
    link, target, error = LINKS[case]
    root = tmp_path / "root"
    _classes(root)
    _png(tmp_path / "outside" / "o.png")
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / "a" / "deeper").mkdir()
    os.symlink(target, root / link)
    if error is None:
        ds = _get(kind, root)
        extra = 1 if case == "file inside" else 2
        assert len(ds) == 4 + extra
        assert sorted(np.asarray(ds.targets).tolist()) == [0] * (2 + extra) + [1] * 2
        return
    with pytest.raises(DataError, match=error) as err:
        _get(kind, root)
    assert link.split("/")[-1] in str(err.value)
    if error.startswith("outside"):  # the user may opt in; a loop never
        ds = _get(kind, root, allow_outside_root=True)
        assert len(ds) == 5 and all(ds[i][0].shape == (3, 4, 4) for i in range(5))


def test_a_symlinked_root_is_the_folder_it_names(tmp_path):
    _classes(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    for kind in KINDS:
        assert len(_get(kind, tmp_path / "alias")) == 4


FILE_LIST_LINKS = {  # the listed entry is a text path inside the folder; its resolved path leaves it
    "file link": ("inside.png", "../outside/o.png"),
    "folder link": ("sub", "../outside"),
}


@pytest.mark.parametrize("case", list(FILE_LIST_LINKS))
def test_a_file_list_entry_resolving_outside_its_folder_is_refused(tmp_path, case):
    from curvfast.data._streaming import FileListDataset

    link, target = FILE_LIST_LINKS[case]
    root = tmp_path / "root"
    _png(root / "ok.png")
    _png(tmp_path / "outside" / "o.png")
    os.symlink(target, root / link)
    entry = "inside.png" if case == "file link" else "sub/o.png"
    (root / "list.txt").write_text(f"ok.png 0\n{entry} 1\n")
    ds = FileListDataset(str(root / "list.txt"))
    assert ds[0][1] == 0
    with pytest.raises(DataError, match=rf"image 1 '.*{entry}' resolves to '.*outside/o.png', outside the list's"):
        ds[1]
    assert FileListDataset(str(root / "list.txt"), allow_outside_root=True)[1][1] == 1


# --- images that fail to decode --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [*KINDS, "list"])
def test_a_decompression_bomb_is_an_error_naming_the_file(tmp_path, kind, monkeypatch):
    from PIL import Image

    _classes(tmp_path)
    _png(tmp_path / "b" / "bomb.png", size=(64, 64))
    if kind == "list":
        (tmp_path / "train.txt").write_text("a/0.png 0\nb/bomb.png 1\n")
        ds = get_dataset("filelist", root=str(tmp_path / "train.txt"))[0]
    else:
        ds = _get(kind, tmp_path, image_size=4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 * 64 > 2 * 1000: PIL's DecompressionBombError
    bomb = sample_paths(ds).index(str(tmp_path / "b" / "bomb.png"))
    with pytest.raises(DataError, match=r"bomb\.png.*4096 pixels.*MAX_IMAGE_PIXELS"):
        ds[bomb]
    ds[0]


class _Exploding:
    def __init__(self, error):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("error", [SyntaxError("broken PNG file"), ValueError("bad tile"), EOFError()])
def test_any_decoder_failure_names_the_file(tmp_path, monkeypatch, error):
    from PIL import Image

    _classes(tmp_path)
    ds = _get("imagefolder", tmp_path)
    monkeypatch.setattr(Image, "open", _Exploding(error))
    with pytest.raises(DataError, match=r"cannot read image 1 '.*a/1\.png'"):
        ds[1]


# --- mixed sizes -----------------------------------------------------------------------------------------------------

def _mixed(root):
    _classes(root)
    _png(root / "b" / "wide.png", size=(6, 5))


@pytest.mark.parametrize("kind", [*KINDS, "list"])
def test_mixed_image_sizes_are_one_error_naming_a_file_of_each_size(tmp_path, kind):
    _mixed(tmp_path)
    if kind == "list":
        (tmp_path / "all.txt").write_text("a/0.png 0\nb/wide.png 1\na/1.png 0\n")

        def make(**kw):
            return get_dataset("filelist", root=str(tmp_path / "all.txt"), **kw)[0]
    else:
        def make(**kw):
            return _get(kind, tmp_path, **kw)
    ds = make()
    with pytest.raises(DataError, match=r"a/0\.png' is 4x4.*b/wide\.png' is 6x5.*--image-size N") as err:
        list(DataLoader(ds, batch_size=8))
    assert "\n" not in str(err.value)
    resized = make(image_size=3)
    batches = list(DataLoader(resized, batch_size=8))
    assert batches[0][0].shape == (len(resized), 3, 3, 3)


# --- file lists: labels and names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", ["12345678901234567890", str(2 ** 24)])
def test_a_huge_label_is_refused_naming_the_line(tmp_path, label):
    from curvfast.data._streaming import FileListDataset

    _png(tmp_path / "x.png")
    (tmp_path / "l.txt").write_text(f"x.png 0\nx.png {label}\n")
    with pytest.raises(DataError, match=rf"l\.txt:2: label {label} is too large"):
        FileListDataset(str(tmp_path / "l.txt"))


BAD_NAME = b"caf\xe9 \xff.png"  # Latin-1 bytes: not UTF-8


@pytest.mark.parametrize("kind", [*KINDS, "list"])
def test_non_utf8_file_names_load_and_errors_show_them_safely(tmp_path, kind):
    from curvfast.data._streaming import StreamingImageFolder

    _classes(tmp_path)
    _png(os.path.join(os.fsencode(tmp_path), b"b", BAD_NAME))
    broken = os.path.join(os.fsencode(tmp_path), b"b", b"z\xe9.png")
    with open(broken, "wb") as f:
        f.write(b"not a png")
    if kind == "list":
        StreamingImageFolder(str(tmp_path)).write_filelist(str(tmp_path / "train.txt"))
        ds = get_dataset("filelist", root=str(tmp_path))[0]
    else:
        ds = _get(kind, tmp_path)
    paths = sample_paths(ds)
    assert len(ds) == 6 and os.fsencode(paths[4]) == os.path.join(os.fsencode(tmp_path), b"b", BAD_NAME)
    assert ds[4][0].shape == (3, 4, 4)
    with pytest.raises(OSError) as err:
        ds[5]
    message = str(err.value)
    message.encode("utf-8")  # printable anywhere: no lone surrogates
    assert "b/z\\xe9.png" in message
    assert printable_path(paths[4]).endswith("b/caf\\xe9 \\xff.png")
    assert printable_path("a\nb.png") == "a\\nb.png"


def test_a_file_list_of_non_utf8_entries_round_trips(tmp_path):
    from curvfast.data._streaming import FileListDataset, StreamingImageFolder

    _classes(tmp_path)
    _png(os.path.join(os.fsencode(tmp_path), b"a", BAD_NAME))
    scanned = StreamingImageFolder(str(tmp_path))
    scanned.write_filelist(str(tmp_path / "l.txt"))
    listed = FileListDataset(str(tmp_path / "l.txt"))
    assert listed.fingerprint() == scanned.fingerprint() and sample_paths(listed) == sample_paths(scanned)


# --- splits ----------------------------------------------------------------------------------------------------------

def _imagenet_layout(root, mixed=False):
    for split in ("train", "val"):
        _classes(root / split)
    if mixed:
        _png(root / "train" / "a" / "big.png", size=(7, 5))
        _png(root / "val" / "b" / "big.png", size=(5, 9))


@pytest.mark.parametrize("kind", KINDS)
def test_imagenet_layout_val_split(tmp_path, kind):
    _imagenet_layout(tmp_path)
    val = _get(kind, tmp_path, split="val")
    assert len(val) == 4 and all(p.startswith(str(tmp_path / "val")) for p in sample_paths(val))
    with pytest.raises(FileNotFoundError, match=r"no 'test' split .*it has train/, val/"):
        _get(kind, tmp_path, split="test")


@pytest.mark.parametrize("split", ["../elsewhere", "val/a", "", "/abs", ".", 3])
def test_a_split_is_a_plain_folder_name(tmp_path, split):
    _imagenet_layout(tmp_path)
    with pytest.raises(ConfigError, match="split must be a folder name"):
        _get("imagefolder", tmp_path, split=split)


@pytest.mark.parametrize("size", [0, 4097, 10 ** 6, True, "8"])
def test_an_image_size_outside_1_to_4096_is_refused(tmp_path, size):
    _classes(tmp_path)
    with pytest.raises(ConfigError, match="image_size must be a positive int of at most 4096"):
        _get("imagefolder", tmp_path, image_size=size)


def test_a_file_list_that_is_not_a_file_is_named(tmp_path):
    from curvfast.data._streaming import FileListDataset

    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError, match="list.txt' is not a regular file"):
        FileListDataset(str(tmp_path / "list.txt"))


# --- sample paths and class names ------------------------------------------------------------------------------------

def test_sample_paths_and_class_names(tmp_path):
    from curvfast.data._streaming import FileListDataset

    _classes(tmp_path)
    expected = [str(tmp_path / c / f"{j}.png") for c in "ab" for j in range(2)]
    for kind in KINDS:
        ds = _get(kind, tmp_path)
        assert sample_paths(ds) == expected and class_names(ds) == ["a", "b"]
        assert sample_paths(Subset(ds, [3, 0])) == [expected[3], expected[0]]
        assert class_names(Subset(ds, [3, 0])) == ["a", "b"]
    (tmp_path / "l.txt").write_text("b/1.png 1\na/0.png 0\n")
    listed = FileListDataset(str(tmp_path / "l.txt"))
    assert sample_paths(listed) == [expected[3], expected[0]] and class_names(listed) is None
    digits = get_dataset("digits", "test")[0]
    assert sample_paths(digits) is None and class_names(digits) is None
    assert sample_paths(torch.utils.data.TensorDataset(torch.zeros(2))) is None


# --- the command line and the pipelines' data options ----------------------------------------------------------------

def test_train_and_score_an_imagenet_layout_folder_of_mixed_sizes(tmp_path, capsys):
    """train/ and val/ with mixed sizes: a one-line error without --image-size, then train on train/, evaluate on
    val/ and score val/ once resized."""
    import json

    from curvfast.cli import main

    root = tmp_path / "data"
    _imagenet_layout(root, mixed=True)
    ckpt, common = str(tmp_path / "m.pt"), ["--dataset", "imagefolder", "--root", str(root)]
    assert main(["train", *common, "--test-split", "val", "--epochs", "1", "--out", ckpt, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--image-size N" in err and "big.png' is 7x5" in err and len(err.strip().splitlines()) == 1
    assert main(["train", *common, "--out", ckpt, "--image-size", "8", "--epochs", "1", "--quiet"]) == 2
    assert "no 'test' split" in capsys.readouterr().err
    assert main(["train", *common, "--image-size", "8", "--test-split", "val", "--epochs", "1", "--out", ckpt,
                 "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["image_size"], info["train_split"], info["test_split"]) == (8, "train", "val")
    out = tmp_path / "run"
    assert main(["score", "--checkpoint", ckpt, *common, "--split", "val", "--image-size", "8", "--out", str(out),
                 "--quiet"]) == 0
    assert len(np.load(out / "scores.npz")["score"]) == 5


def test_pipeline_data_options_name_the_splits(tmp_path):
    from curvfast.pipelines.common.data import DataOptions, load_split

    _imagenet_layout(tmp_path, mixed=True)
    options = DataOptions(dataset="imagefolder", root=str(tmp_path), test_split="val", image_size=4)
    options.check_data_options()
    test, info = load_split(options, "test")
    assert sample_paths(test)[0].startswith(str(tmp_path / "val")) and info.num_classes == 2
    assert next(iter(DataLoader(test, batch_size=8)))[0].shape == (5, 3, 4, 4)
    with pytest.raises(ConfigError, match="test_split must be a folder name"):
        DataOptions(test_split="../x").check_data_options()
