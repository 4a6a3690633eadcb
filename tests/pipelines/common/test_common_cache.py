"""The one "reuse when the settings match" helper of the pipelines (curvfast.pipelines.common.cache)."""
import json

import pytest

from curvfast.io import write_json
from curvfast.pipelines.common.cache import MISSING, cached, describe, differences, settings_hash


def _load(path):
    with open(path) as f:
        record = json.load(f)
    return record["settings"], record["value"]


def _save(path, value, settings):
    write_json(path, {"settings": settings, "value": value})


def _counting(value):
    calls = []
    return calls, lambda: calls.append(1) or value


def test_differences_name_what_differs_and_what_is_missing():
    assert differences({"a": 1, "b": [2], "extra": 0}, {"a": 1, "b": [2]}) == {}
    diff = differences({"noise": 0.25, "seed": 0}, {"noise": 0.4, "seed": 0, "model": "mlp"})
    assert diff == {"noise": (0.25, 0.4), "model": (MISSING, "mlp")}
    assert describe(diff) == "noise: 0.25 there, 0.4 here, model: 'missing' there, 'mlp' here"
    assert differences(None, {"a": 1}) == {"a": (MISSING, 1)}


def test_cached_reuses_a_match_and_recomputes_a_mismatch(tmp_path):
    path = str(tmp_path / "value.json")
    calls, compute = _counting([1, 2])
    assert cached(path, {"n": 1}, compute, load=_load, save=_save) == ([1, 2], False)  # missing file: computed
    assert cached(path, {"n": 1}, compute, load=_load, save=_save) == ([1, 2], True) and len(calls) == 1
    calls, compute = _counting([3])
    assert cached(path, {"n": 2}, compute, load=_load, save=_save) == ([3], False) and calls == [1]
    assert _load(path) == ({"n": 2}, [3])  # the new value and its settings replaced the old ones


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"value": 1}'])
def test_a_corrupt_or_incomplete_cache_file_is_recomputed_not_trusted(tmp_path, content):
    path = tmp_path / "value.json"
    path.write_bytes(content)
    calls, compute = _counting(7)
    assert cached(str(path), {"n": 1}, compute, load=_load, save=_save) == (7, False) and calls == [1]
    assert _load(str(path)) == ({"n": 1}, 7)


def test_settings_hash_is_order_free_and_names_the_settings():
    assert settings_hash({"a": 1, "b": 2}) == settings_hash({"b": 2, "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2}) and len(settings_hash({"a": 1}, 16)) == 16
