"""The compressed-video pipeline on the real MPEG-4 Part 2 codec (PyAV): motion vectors of a
known translation, residual reconstruction, CoViAR accumulation, segment sampling, the
synthetic dataset cache, folder loaders, and clear errors for bad files."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("av")

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
    with pytest.raises(ValueError, match="rng"):
        segment_positions(24, 3, train=True)
    with pytest.raises(ValueError, match="representation"):
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
    with pytest.raises(ValueError, match="split"):
        hmdb51_clips(str(hmdb), "val")


def test_bad_video_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        decode_compressed(str(tmp_path / "nope.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="garbage.mp4"):
        decode_compressed(str(garbage))
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.avi"):
        decode_compressed(str(empty))
    with pytest.raises(ValueError, match="even H, W"):
        encode_clip(np.zeros((3, 15, 16, 3), np.uint8), str(tmp_path / "odd.mp4"))
    with pytest.raises(ValueError, match="uint8"):
        encode_clip(np.zeros((3, 16, 16, 3), np.float32), str(tmp_path / "float.mp4"))
