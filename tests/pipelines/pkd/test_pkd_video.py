"""The compressed-video pipeline on the real MPEG-4 Part 2 codec (PyAV): motion vectors of a
known translation, residual reconstruction, CoViAR accumulation, segment sampling, the
synthetic dataset cache, folder loaders, and clear errors for bad files."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("av")
from curvfast.errors import ConfigError, DataError, UnknownNameError  # noqa: E402

from curvfast.pipelines.pkd.video import (  # noqa: E402
    ClipSet, CompressedVideoDataset, SyntheticConfig, accumulate, compressed_representation, decode_compressed,
    displacement_field, encode_clip, folder_clipset, frame_residuals, hmdb51_clips, motion_compensate,
    sample_frames, segment_positions, synthetic_actions, ucf101_clips,
)


def _photo_canvas(size: int) -> np.ndarray:
    """A crop of a real bundled photo, uint8 RGB: texture the encoder's motion search can lock on."""
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]
    return np.ascontiguousarray(photo[100:100 + size, 200:200 + size])


def _translating_clip(dx: int, dy: int, frames: int = 8, size: int = 48) -> np.ndarray:
    """frame_t(p) = canvas(p - t (dx, dy)): content moves by (+dx, +dy) pixels per frame."""
    canvas = _photo_canvas(size + 2 * frames * max(abs(dx), abs(dy)) + 2)
    o = frames * max(abs(dx), abs(dy)) + 1
    return np.stack([canvas[o - t * dy: o - t * dy + size, o - t * dx: o - t * dx + size] for t in range(frames)])


@pytest.fixture(scope="module")
def translating(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "shift.mp4")
    encode_clip(_translating_clip(2, -1), path, qscale=2)
    return decode_compressed(path)


def test_known_translation_yields_that_motion_vector(translating):
    assert list(translating.picture_types[:3]) == [1, 2, 2]  # I then P, no B-frames
    votes = []
    for t in range(1, len(translating.picture_types)):
        rows = translating.motion_vectors[t]  # columns: source w h src_x src_y dst_x dst_y motion_x motion_y scale
        assert len(rows) > 0 and (rows[:, 0] == -1).all()  # predicted from the past frame
        assert (np.abs(rows[:, 3] * rows[:, 9] - (rows[:, 5] * rows[:, 9] + rows[:, 7])) < rows[:, 9]).all()  # src ~ dst + mv
        interior = (rows[:, 5] > 8) & (rows[:, 5] < 40) & (rows[:, 6] > 8) & (rows[:, 6] < 40)
        votes.append(rows[interior][:, 7:9] / rows[interior][:, 9:10])
    votes = np.concatenate(votes)
    # content moves by (+2, -1) per frame, so the block is read from (-2, +1) in the past frame
    correct = (votes == np.array([-2.0, 1.0])).all(axis=1)
    assert correct.mean() >= 0.9, f"only {correct.mean():.2f} of interior blocks carry the true motion"


def test_decoding_leaves_no_pyav_objects_for_a_later_garbage_collection(tmp_path):
    """PyAV frames with motion-vector side data form reference cycles. Left to the garbage collector,
    they were freed in a forked DataLoader worker, whose copy of their swscale context has no slice
    threads: the worker hung in pthread_cond_destroy (a CI run of test_devices' pkd case) or crashed.
    The decoder collects them itself, in the process that made them."""
    import gc

    path = encode_clip(_translating_clip(2, -1), str(tmp_path / "shift.mp4"), qscale=2)
    gc.collect()
    gc.disable()
    try:
        before = _pyav_objects()
        decode_compressed(path)
        left = _pyav_objects() - before
    finally:
        gc.enable()
    assert left == 0


def _pyav_objects() -> int:
    import gc

    return sum(str(getattr(type(o), "__module__", "")).startswith("av.") for o in gc.get_objects())


def test_residual_reconstructs_decoded_frame(translating):
    fields, residuals = frame_residuals(translating)
    frames = translating.frames.astype(np.float32)
    for t in range(1, len(frames)):
        prediction = motion_compensate(translating.frames[t - 1], fields[t])
        np.testing.assert_allclose(prediction + residuals[t], frames[t], atol=1e-3)
        # the motion-compensated prediction explains most of the frame: its residual is far smaller
        # than the zero-motion difference (what the residual would be without the vectors)
        assert np.abs(residuals[t]).mean() < 0.5 * np.abs(frames[t] - frames[t - 1]).mean()
    assert not residuals[0].any() and not fields[0].any()  # I-frame: no prediction


def test_displacement_field_covers_blocks_and_ignores_future_refs():
    rows = np.array([[-1, 16, 16, 6, 7, 8, 8, -4, -2, 2],     # 16x16 block at (0..16, 0..16): (-2, -1)
                     [-1, 8, 8, 21, 4, 20, 4, 2, 0, 2],       # 8x8 block at (16..24, 0..8): (+1, 0)
                     [1, 16, 16, 9, 25, 8, 24, 2, 2, 2]])     # a future reference: not followed
    field = displacement_field(rows, 32, 32)
    np.testing.assert_array_equal(field[0:16, 0:16], np.broadcast_to([-2.0, -1.0], (16, 16, 2)))
    np.testing.assert_array_equal(field[0:8, 16:24], np.broadcast_to([1.0, 0.0], (8, 8, 2)))
    assert not field[16:, :].any() and not field[8:16, 16:].any() and not field[:, 24:].any()


def test_motion_compensate_half_pel_is_bilinear():
    ref = np.arange(16, dtype=np.float64).reshape(4, 4, 1)
    field = np.zeros((4, 4, 2), np.float32)
    field[..., 0] = 0.5
    pred = motion_compensate(ref, field)
    np.testing.assert_allclose(pred[:, :3, 0], (ref[:, :3, 0] + ref[:, 1:, 0]) / 2)
    np.testing.assert_allclose(pred[:, 3, 0], ref[:, 3, 0])  # clamped at the right edge


@pytest.mark.parametrize("subpel", [True, False])
def test_accumulation_reconstructs_frames_from_the_iframe(subpel):
    """F_t = I(S_t) + R_t exactly for integer motion, with either accumulation rule."""
    rng = np.random.default_rng(0)
    t, h, w = 7, 16, 16
    mask = np.zeros(t, bool)
    mask[[0, 4]] = True  # two GOPs
    fields = np.zeros((t, h, w, 2), np.float32)
    residuals = np.zeros((t, h, w, 3), np.float32)
    frames = [rng.uniform(0, 255, (h, w, 3)).astype(np.float32)]
    for i in range(1, t):
        if mask[i]:
            frames.append(rng.uniform(0, 255, (h, w, 3)).astype(np.float32))
            continue
        blocks = rng.integers(-2, 3, (2, 2, 2)).astype(np.float32)
        fields[i] = np.kron(blocks, np.ones((8, 8, 1), np.float32))
        residuals[i] = rng.normal(0, 5, (h, w, 3))
        frames.append(motion_compensate(frames[i - 1], fields[i]) + residuals[i])
    acc_mv, acc_res = accumulate(fields, residuals, mask, subpel=subpel)
    ys, xs = np.mgrid[0:h, 0:w]
    for i in range(t):
        iframe = frames[np.flatnonzero(mask[: i + 1])[-1]]
        assert np.all(acc_mv[i] == np.rint(acc_mv[i]))  # integer motion stays integer
        recon = iframe[(ys + acc_mv[i][..., 1]).astype(int), (xs + acc_mv[i][..., 0]).astype(int)] + acc_res[i]
        np.testing.assert_allclose(recon, frames[i], atol=1e-3)
    assert not acc_mv[mask].any() and not acc_res[mask].any()


def test_subpel_accumulation_keeps_slow_motion_that_coviar_rounding_loses():
    t, h, w = 5, 16, 16
    mask = np.array([True] + [False] * (t - 1))
    fields = np.zeros((t, h, w, 2), np.float32)
    fields[1:, ..., 0] = -0.25  # content moving right by a quarter pixel per frame
    residuals = np.zeros((t, h, w, 3), np.float32)
    sub, _ = accumulate(fields, residuals, mask, subpel=True)
    rounded, _ = accumulate(fields, residuals, mask, subpel=False)
    np.testing.assert_allclose(sub[4, :, 4:, 0], -1.0, atol=1e-6)  # 4 x 0.25 px, away from the clamped edge
    assert not rounded.any()


def test_compressed_representation_of_real_clip(translating):
    rep = compressed_representation(translating)
    t = len(translating.frames)
    assert rep.iframes.shape == (1, 3, 48, 48) and rep.mv.shape == (t, 2, 48, 48) and rep.residual.shape == (t, 3, 48, 48)
    # accumulated interior motion after k frames is k times the per-frame vector (-2, +1)
    mid = rep.mv[5, :, 16:32, 16:32].astype(np.float32)
    assert np.median(mid[0]) == -10.0 and np.median(mid[1]) == 5.0


def test_segment_sampling():
    np.testing.assert_array_equal(segment_positions(24, 3, train=False), [4, 12, 20])
    rng = np.random.default_rng(0)
    for _ in range(50):
        pos = segment_positions(24, 3, train=True, rng=rng)
        assert (pos >= [0, 8, 16]).all() and (pos < [8, 16, 24]).all()
    mask = np.zeros(24, bool)
    mask[[0, 12]] = True
    for train in (False, True):
        for _ in range(20):
            idx = sample_frames("mv", mask, 3, train, rng)
            assert not mask[idx].any() and len(idx) == 3
            gops = sample_frames("iframe", mask, 3, train, rng)
            assert set(gops.tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match="rng"):
        segment_positions(24, 3, train=True)
    with pytest.raises(UnknownNameError, match="representation"):
        sample_frames("flow", mask, 3, False)


def test_synthetic_dataset_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CURVFAST_CACHE", str(tmp_path))
    config = SyntheticConfig(clips_per_class=2, size=16, frames=13, test_fraction=0.5)
    train, test = synthetic_actions(config, progress=False)
    assert len(train) == len(test) == 16 and len(train.classes) == 16
    assert np.bincount(train.labels, minlength=16).tolist() == [1] * 16
    rep = train.reps[0]
    assert rep.iframes.shape == (2, 3, 16, 16) and rep.mv.shape == (13, 2, 16, 16) and rep.iframe_mask[[0, 12]].all()
    cached = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs]
    assert any(p.endswith("representations.npz") for p in cached)
    again, _ = synthetic_actions(config, progress=False)  # loaded from the cache
    for a, b in zip(train.reps, again.reps):
        np.testing.assert_array_equal(a.mv, b.mv)
        np.testing.assert_array_equal(a.residual, b.residual)
    data = CompressedVideoDataset(train, num_segments=3, train=True, seed=0)
    x1, y1 = data[3]
    assert x1["iframe"].shape == (3, 3, 16, 16) and x1["mv"].shape == (3, 2, 16, 16) and y1 == int(train.labels[3])
    x2, _ = data[3]
    np.testing.assert_array_equal(x1["residual"].numpy(), x2["residual"].numpy())  # keyed by (seed, epoch, index)


def _fake_videos(root, names):
    rng = np.random.default_rng(0)
    for rel in names:
        frames = rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8).repeat(14, axis=0)
        encode_clip(frames, os.path.join(root, rel))


def test_ucf101_and_hmdb51_folders(tmp_path):
    ucf = tmp_path / "ucf"
    _fake_videos(ucf, ["Archery/v_Archery_g01_c01.avi", "Biking/v_Biking_g02_c01.avi"])
    (ucf / "ucfTrainTestlist").mkdir()
    (ucf / "ucfTrainTestlist" / "classInd.txt").write_text("1 Archery\n2 Biking\n")
    (ucf / "ucfTrainTestlist" / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 1\nBiking/v_Biking_g02_c01.avi 2\n")
    paths, labels, classes = ucf101_clips(str(ucf), "train")
    assert classes == ["Archery", "Biking"] and labels.tolist() == [0, 1]
    clips = folder_clipset(paths, labels, classes, str(tmp_path / "cache"), size=16, max_frames=13)
    assert isinstance(clips, ClipSet) and clips.reps[0].mv.shape == (13, 2, 16, 16)
    assert len(os.listdir(tmp_path / "cache")) == 2

    hmdb = tmp_path / "hmdb"
    _fake_videos(hmdb, ["wave/a.avi", "wave/b.avi", "run/c.avi"])
    splits = hmdb / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "wave_test_split1.txt").write_text("a.avi 1\nb.avi 2\n")
    (splits / "run_test_split1.txt").write_text("c.avi 2\n")
    paths, labels, classes = hmdb51_clips(str(hmdb), "test")
    assert classes == ["run", "wave"] and labels.tolist() == [0, 1] and paths[1].endswith("b.avi")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ucf101_clips(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="split"):
        hmdb51_clips(str(hmdb), "val")


def test_bad_video_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        decode_compressed(str(tmp_path / "nope.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="garbage.mp4"):
        decode_compressed(str(garbage))
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.avi"):
        decode_compressed(str(empty))
    with pytest.raises(DataError, match="even H, W"):
        encode_clip(np.zeros((3, 15, 16, 3), np.uint8), str(tmp_path / "odd.mp4"))
    with pytest.raises(DataError, match="uint8"):
        encode_clip(np.zeros((3, 16, 16, 3), np.float32), str(tmp_path / "float.mp4"))


def _ucf_layout(root, with_split_folders: bool, classes=(0, 5, 10), train=3, test=1, frames=14, size=16):
    """A UCF-101-layout folder of short real-codec videos rendered by the synthetic generator: either
    ``train/`` and ``test/`` folders of ``<class>/<clip>.avi``, or ``<class>/<clip>.mp4`` with split lists."""
    from curvfast.pipelines.pkd.video import render_clip
    from curvfast.pipelines.pkd.video.synthetic import class_names

    config = SyntheticConfig(size=size, frames=frames)
    names, lists = class_names(), {"train": [], "test": []}
    for c in classes:
        name = names[c].replace("/", "_")
        for i in range(train + test):
            split = "train" if i < train else "test"
            rel = f"{name}/v_{name}_g{i:02d}.{'avi' if with_split_folders else 'mp4'}"
            frames_ = render_clip(c, config, np.random.default_rng([c, i]))
            encode_clip(frames_, str(root / split / rel) if with_split_folders else str(root / rel))
            lists[split].append(rel)
    if not with_split_folders:
        for split, rels in lists.items():
            (root / f"{split}.txt").write_text("".join(f"{r} 1\n" for r in rels))
    return root


@pytest.mark.parametrize("with_split_folders", [True, False], ids=["train-test-folders", "split-lists"])
def test_videofolder_lists_both_layouts_and_names_a_missing_split(tmp_path, with_split_folders):
    from curvfast.pipelines.pkd.video import videofolder_clips

    root = _ucf_layout(tmp_path / "ucf", with_split_folders)
    paths, labels, classes = videofolder_clips(str(root), "train")
    assert classes == ["left_shape", "right_slow_digit", "rotate_cw_digit"]
    assert len(paths) == 9 and np.bincount(labels).tolist() == [3, 3, 3] and all(os.path.isfile(p) for p in paths)
    test_paths, test_labels, _ = videofolder_clips(str(root), "test")
    assert len(test_paths) == 3 and sorted(test_labels.tolist()) == [0, 1, 2]
    assert not set(paths) & set(test_paths)
    if with_split_folders:
        (root / "test").rename(root / "held")
    else:
        (root / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="looked for the folder .*test.* and the split lists .*test.txt"):
        videofolder_clips(str(root), "test")


def test_clips_are_cached_once_on_disk_resumably_and_read_lazily(tmp_path):
    """cache_clips writes one folder per clip; a rerun prepares only what is missing; reads are memory-mapped."""
    import shutil

    from curvfast.pipelines.pkd.video import ClipFiles, cache_clips, read_frames, read_representation, videofolder_clips

    root = _ucf_layout(tmp_path / "ucf", True, classes=(0, 5), train=2, test=0)
    paths, labels, classes = videofolder_clips(str(root), "train")
    cache = tmp_path / "cache"
    clips = cache_clips(paths, str(cache), size=16)  # whole clips: all 14 frames
    assert isinstance(clips, ClipFiles) and len(clips) == 4 and sorted(os.listdir(cache)) == sorted(
        os.path.basename(f) for f in clips.folders)
    rep = clips[0]
    assert isinstance(rep.mv, np.memmap) and rep.mv.shape == (14, 2, 16, 16) and rep.iframes.shape == (2, 3, 16, 16)
    direct = compressed_representation(decode_compressed(encode_clip(read_frames(paths[0], 16),
                                                                     str(tmp_path / "direct.mp4"))))
    np.testing.assert_array_equal(rep.residual, direct.residual)  # the cache holds what the codec path gives
    stamps = {f: os.path.getmtime(os.path.join(f, "mv.npy")) for f in clips.folders}
    shutil.rmtree(clips.folders[2])  # an interrupted run: one clip missing
    again = cache_clips(paths, str(cache), size=16)
    assert again.folders == clips.folders and os.path.isdir(clips.folders[2])
    assert all(os.path.getmtime(os.path.join(f, "mv.npy")) == stamps[f] for i, f in enumerate(clips.folders) if i != 2)
    assert not [f for f in os.listdir(cache) if ".tmp-" in f]  # no half-written folder left
    np.testing.assert_array_equal(read_representation(clips.folders[1], mmap=False).mv, clips[1].mv)
    subset = ClipSet(clips, labels, classes).subset(labels == 1)
    assert isinstance(subset.reps, ClipFiles) and subset.reps.folders == clips.folders[2:]


def test_pkd_smoke_run_on_a_ucf101_layout_folder(tmp_path, monkeypatch):
    """The issue's done-when command: `curvfast pkd --preset smoke --dataset videofolder --root DIR --device cpu`."""
    import json

    import torch

    from curvfast.cli import main

    monkeypatch.setenv("CURVFAST_CACHE", str(tmp_path / "cache"))
    root = _ucf_layout(tmp_path / "ucf", True)
    out = tmp_path / "run"
    assert main(["pkd", "--preset", "smoke", "--dataset", "videofolder", "--root", str(root), "--prepare-only",
                 "--workers", "2", "--out", str(tmp_path / "prep"), "--quiet"]) == 0  # the cache, in 2 processes
    prepared = json.loads((tmp_path / "prep" / "results.json").read_text())
    assert prepared["prepared_only"] and (prepared["num_train"], prepared["num_test"]) == (9, 3)
    assert main(["pkd", "--preset", "smoke", "--dataset", "videofolder", "--root", str(root), "--device", "cpu",
                 "--out", str(out), "--threads", "1", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["dataset"] == "videofolder" and res["settings"]["device"] == "cpu"
    assert res["settings"]["frames"] == 13 and res["settings"]["backbone"] == "small"  # the smoke preset, resolved
    assert res["num_train"] == 9 and res["num_test"] == 3 and res["classes"] == ["left_shape", "right_slow_digit", "rotate_cw_digit"]
    assert len(res["ic_accuracy"]["pkd"]) == 12 and 0 <= res["wise"]["accuracy"] <= 1
    cached = os.listdir(tmp_path / "cache" / "compressed" / "16px-13f")
    assert len(cached) == 12
    assert main(["pkd", "--preset", "smoke", "--dataset", "videofolder", "--root", str(tmp_path / "nope"),
                 "--out", str(out)]) == 2
    assert main(["pkd", "--preset", "smoke", "--out", str(out), "--device", "tpu"]) == 2
    if not torch.cuda.is_available():
        assert main(["pkd", "--preset", "smoke", "--out", str(out), "--device", "cuda:0"]) == 2
