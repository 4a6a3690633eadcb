"""Data loading under hostile input: a file list naming a FIFO ends with an error instead of hanging, entries
outside the list's root are refused, and a corrupt image's error names the file."""
from __future__ import annotations

import numpy as np
import pytest

from _robust_helpers import assert_script_refuses

HANG_SCRIPTS = {  # each used to run forever
    "file list naming a FIFO": """
        import os, sys, tempfile
        from curvfast.data._streaming import FileListDataset
        d = tempfile.mkdtemp()
        os.mkfifo(os.path.join(d, "pipe.jpg"))
        open(os.path.join(d, "list.txt"), "w").write("pipe.jpg 0\\n")
        try:
            FileListDataset(os.path.join(d, "list.txt"))[0]
        except OSError as err:
            print("refused:", err)
    """,
}


@pytest.mark.parametrize("case", list(HANG_SCRIPTS))
def test_former_hangs_end_with_an_error(case):
    assert_script_refuses(HANG_SCRIPTS[case])


def _write_images(folder, names):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / name)


@pytest.mark.parametrize("entry", ["../outside.png", "/abs/outside.png", "sub/../../outside.png"])
def test_file_list_entries_outside_root_are_refused(tmp_path, entry):
    from curvfast.data._streaming import FileListDataset

    _write_images(tmp_path, ["outside.png"])
    listing = tmp_path / "root" / "list.txt"
    (listing.parent / "sub").mkdir(parents=True)
    listing.write_text(f"{entry.replace('/abs', str(tmp_path))} 0\n")
    with pytest.raises(ValueError, match="outside the root"):
        FileListDataset(str(listing))
    ds = FileListDataset(str(listing), allow_outside_root=True)
    assert ds[0][0].shape == (3, 4, 4)


def test_corrupt_image_error_names_the_file(tmp_path):
    from curvfast.data import get_dataset

    for cls in ("a", "b"):
        _write_images(tmp_path / cls, ["ok.png"])
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    ds, _ = get_dataset("imagefolder", root=str(tmp_path))
    broken = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.jpg")][0]
    with pytest.raises(OSError, match="broken.jpg"):
        ds[broken]
