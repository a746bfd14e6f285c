"""Grain batches: bucketing, determinism, iterator state, substitution of short clips, augmentation."""
import numpy as np

from mtvjax.data import skeleton
from mtvjax.data.loader import ClipListSource, MotionBatchBuilder, make_batches, make_iterator
from mtvjax.data.motion_files import MotionClip
from mtvjax.data.synthetic_motion import SyntheticMotionSource

SOURCE = SyntheticMotionSource(10, (140, 200), seed=1)


def _bones(motion):
    return np.linalg.norm(motion[..., [c for _, c in skeleton.BONES], :] -
                          motion[..., [p for p, _ in skeleton.BONES], :], axis=-1)


def test_each_batch_has_one_bucket_and_is_deterministic():
    batches = make_batches(SOURCE, 3, (33, 49, 81), (1, 2), seed=7)
    again = make_batches(SOURCE, 3, (33, 49, 81), (1, 2), seed=7)
    seen = set()
    for i in range(12):
        b = batches[i]
        assert b["motion"].shape[0] == 3 and b["motion"].shape[1:] in {(f, 24, 3) for f in (33, 49, 81)}
        assert b["motion"].dtype == np.float32 and int(b["skipped"]) == 0
        np.testing.assert_array_equal(b["motion"], again[i]["motion"])
        seen.add(b["motion"].shape[1])
    assert len(seen) > 1
    other_seed = make_batches(SOURCE, 3, (33, 49, 81), (1, 2), seed=8)
    assert not all(np.array_equal(batches[i]["motion"], other_seed[i]["motion"]) for i in range(4))


def test_windows_are_strided_crops_of_the_clip():
    clip = SOURCE[0].motion
    source = ClipListSource([MotionClip(clip, "one")])
    batches = make_batches(source, 1, (33,), (2,), seed=0)
    window = batches[0]["motion"][0]
    starts = [s for s in range(len(clip) - 64) if np.array_equal(clip[s:s + 65:2], window)]
    assert len(starts) == 1


def test_iterator_state_resumes_the_same_batches():
    batches = make_batches(SOURCE, 2, (33, 49), (1, 2), seed=3)
    it = make_iterator(batches, num_threads=2, prefetch=2)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["motion"] for _ in range(3)]
    resumed = make_iterator(batches, num_threads=1, prefetch=1)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["motion"], want)


def test_too_short_clips_are_replaced_and_counted():
    long_clip, short_clip = SOURCE[0].motion, SOURCE[1].motion[:40]
    source = ClipListSource([MotionClip(long_clip, "long"), MotionClip(short_clip, "short")])
    batches = make_batches(source, 2, (49,), (1,), seed=0)
    b = batches[0]
    assert b["motion"].shape == (2, 49, 24, 3) and int(b["skipped"]) == 1


def test_augmentation_scales_and_shifts_within_ten_percent():
    motion = SOURCE[0].motion[:33]
    builder = MotionBatchBuilder(SOURCE, (33,), scale_aug=0.1, shift_aug=0.1)
    extent = np.ptp(motion[0], axis=0).max()
    rng = np.random.default_rng(0)
    scales = []
    for _ in range(50):
        out = builder._augment(motion, rng)
        scale = (_bones(out) / _bones(motion)).mean()
        np.testing.assert_allclose(_bones(out) / _bones(motion), scale, rtol=1e-4)
        shift = out - motion * scale
        np.testing.assert_allclose(shift, shift[:1, :1].repeat(33, 0).repeat(24, 1), atol=0.05)
        assert np.all(np.abs(shift[0, 0]) <= 0.1 * extent + 1e-3)
        scales.append(scale)
    assert 0.9 - 1e-4 <= min(scales) < 0.95 and 1.05 < max(scales) <= 1.1 + 1e-4
    plain = MotionBatchBuilder(SOURCE, (33,))
    np.testing.assert_array_equal(plain._augment(motion, rng), motion)


def test_processes_split_each_global_batch_into_blocks():
    source = ClipListSource([MotionClip(SOURCE[i].motion, str(i)) for i in range(8)])
    whole = make_batches(source, 4, (33, 49), (1, 2), seed=5, scale_aug=0.1, shift_aug=0.1)
    parts = [make_batches(source, 4, (33, 49), (1, 2), seed=5, scale_aug=0.1, shift_aug=0.1,
                          process_index=p, process_count=2) for p in range(2)]
    seen = []
    for i in range(2):                    # 2 global batches of 4 = one epoch of 8 clips
        joined = np.concatenate([part[i]["motion"] for part in parts])
        np.testing.assert_array_equal(joined, whole[i]["motion"])
        for window in joined:
            seen.append(next(k for k in range(8) if _matches(window, source[k].motion)))
    assert sorted(seen) == list(range(8))


def _matches(window, clip):
    """Whether `window` is a scaled, shifted strided crop of `clip`."""
    for stride in (1, 2):
        for start in range(len(clip) - (len(window) - 1) * stride):
            crop = clip[start:start + (len(window) - 1) * stride + 1:stride]
            a, b = window - window.mean((0, 1)), crop - crop.mean((0, 1))
            scale = (a * b).sum() / (b * b).sum()
            if np.allclose(a, scale * b, atol=1e-2 * np.abs(a).max()):
                return True
    return False


def test_epoch_shuffle_is_a_fresh_seeded_permutation_every_pass():
    from mtvjax.data.loader import EpochShuffle
    items = np.arange(10, 23)
    order = EpochShuffle(items, seed=3)
    passes = [[order[e * len(items) + j] for j in range(len(items))] for e in range(3)]
    for p in passes:
        assert sorted(p) == list(items)
    assert passes[0] != passes[1] and passes[1] != passes[2]
    assert passes == [[EpochShuffle(items, seed=3)[e * len(items) + j] for j in range(len(items))]
                      for e in range(3)]
    assert [EpochShuffle(items, seed=4)[j] for j in range(len(items))] != passes[0]
