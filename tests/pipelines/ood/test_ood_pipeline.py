"""``curvfast ood``: a bad --out is refused before any data is read or any network trained."""
from __future__ import annotations

import pytest

import curvfast.pipelines.ood.pipeline as ood
from curvfast.errors import ConfigError


def _never(*_args, **_kwargs):
    raise AssertionError("the run started before --out was checked")


@pytest.mark.parametrize("layout", ["a file", "a folder inside a file"])
def test_an_out_that_cannot_be_a_folder_is_refused_before_the_run(layout, tmp_path, monkeypatch):
    monkeypatch.setattr(ood, "load_split", _never)
    (tmp_path / "f").write_text("mine\n")
    out = tmp_path / "f" if layout == "a file" else tmp_path / "f" / "run"
    with pytest.raises((ConfigError, OSError), match="f"):
        ood.run(ood.Config(), out=str(out))
    assert (tmp_path / "f").read_text() == "mine\n"
