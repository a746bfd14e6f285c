"""Pose pickles holding torch tensors, as the reference extraction script writes them, read
without torch: both official layouts, a CUDA device tag, the detection rule, hostile payloads."""
import collections
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from data_pipeline.readers.ingest import load_motion_file
from mtvjax.data.detections import COUNT_KEYS
from mtvjax.data.load_limits import LoadLimits
from mtvjax.data.motion_errors import LimitExceededError, MotionFormatError, UnsafePickleError
from mtvjax.data.motion_files import read_clips
from mtvjax.data.safe_pickle import load_pickle, loads_pickle
from mtvjax.data.torch_pickle import LEGACY_MAGIC

torch = pytest.importorskip("torch")


class _StorageOn:
    """Pickles a tensor's storage as torch does, with the device tag rewritten (no GPU needed)."""

    def __init__(self, tensor, device: str):
        self.tensor, self.device = tensor, device

    def __reduce__(self):
        buf = io.BytesIO()
        torch.save(self.tensor._typed_storage(), buf, _use_new_zipfile_serialization=False)
        tag = self.device.encode()
        data = buf.getvalue()
        assert data.count(b"X\x03\x00\x00\x00cpu") == 1
        data = data.replace(b"X\x03\x00\x00\x00cpu", b"X" + len(tag).to_bytes(4, "little") + tag)
        return torch.storage._load_from_bytes, (data,)


class _DevicePickler(pickle.Pickler):
    """Emits the opcodes `pickle.dump` writes for tensors on `device`."""

    device = "cuda:0"

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor):
            return torch._utils._rebuild_tensor_v2, (
                _StorageOn(obj, self.device), obj.storage_offset(), tuple(obj.size()), obj.stride(),
                False, collections.OrderedDict())
        return NotImplemented


def _dump_on_gpu(obj, path):
    with open(path, "wb") as f:
        _DevicePickler(f, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)


def _people(frames: int, people: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(frames, people, 24, 3)) * 300 + [0, 0, 3000]).astype(np.float32)


def test_tensors_of_every_dtype_and_layout_become_numpy():
    base = torch.arange(24 * 3 * 2, dtype=torch.float32).reshape(2, 24, 3)
    tensors = [base, base[:, 5], base.transpose(0, 2), base.half(), base.double(),
               base.to(torch.bfloat16), base.int(), base.long(), torch.zeros(0, 24, 3)]
    for protocol in (2, pickle.DEFAULT_PROTOCOL):
        out = loads_pickle(pickle.dumps({"t": tensors}, protocol=protocol))["t"]
        for got, want in zip(out, tensors):
            assert isinstance(got, np.ndarray) and got.shape == tuple(want.shape)
            np.testing.assert_allclose(got.astype(np.float64), want.double().numpy(), rtol=1e-6)
    buf = io.BytesIO()
    _DevicePickler(buf).dump(collections.OrderedDict(t=base))
    np.testing.assert_array_equal(loads_pickle(buf.getvalue())["t"], base.numpy())


def test_official_per_video_layout_on_cuda(tmp_path):
    joints = _people(6)
    data = {"video_path": "v.mp4", "video_length": 6, "video_width": 64, "video_height": 64,
            "pose": {"joints3d_nonparam": [torch.from_numpy(j) for j in joints]}}
    path = tmp_path / "nlf.pkl"
    _dump_on_gpu(data, path)
    assert b"cuda:0" in path.read_bytes()
    (rec,) = load_motion_file(path)
    np.testing.assert_allclose(rec.motion, joints[:, 0], rtol=1e-6)  # the first person
    assert rec.frame_counts["frames_with_several_people"] == 6
    (clip,) = read_clips(path)
    np.testing.assert_allclose(clip.motion, rec.motion, rtol=1e-6)


def test_official_training_layout_with_gaps(tmp_path):
    joints = _people(12, people=1)[:, 0]
    per_frame = [[torch.from_numpy(j)] for j in joints]
    per_frame[3] = []                                        # one frame without a person
    per_frame[7] = per_frame[8] = per_frame[9] = []          # a longer gap
    per_frame[5] = [torch.from_numpy(joints[5]), torch.from_numpy(joints[0])]  # two people
    path = tmp_path / "train.pkl"
    _dump_on_gpu({"poses": {"joints3d_nonparam": per_frame}, "frame_count": 12}, path)

    with pytest.raises(MotionFormatError, match="train.pkl.*no person detected in 4 of 12"):
        load_motion_file(path)
    first, second = load_motion_file(path, missing="split", max_gap=1)
    np.testing.assert_array_equal(first.frame_indices, np.arange(7))
    np.testing.assert_array_equal(second.frame_indices, [10, 11])
    np.testing.assert_allclose(first.motion[3], (joints[2] + joints[4]) / 2, rtol=1e-5)
    np.testing.assert_allclose(first.motion[5], joints[5], rtol=1e-6)
    total = {k: first.frame_counts[k] + second.frame_counts[k] for k in COUNT_KEYS}
    assert total == {"frames": 12, "frames_without_person": 4, "frames_with_several_people": 1,
                     "frames_filled": 1, "frames_dropped": 3, "clips_split": 1}
    (whole,) = load_motion_file(path, max_gap=3)
    np.testing.assert_allclose(whole.motion[8], (joints[6] + joints[10]) / 2, rtol=1e-5)
    names = [c.name for c in read_clips(path, missing="split", max_gap=1)]
    assert names == [f"{path}[0]#0", f"{path}[0]#1"]


def test_stride_zero_tensor_is_bounded_before_it_is_copied():
    huge = torch.zeros(1).expand(2**31)
    with pytest.raises(LimitExceededError, match="huge.pkl.*tensor"):
        loads_pickle(pickle.dumps(huge), "huge.pkl", LoadLimits(max_bytes=2**30))


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Smuggled:
    """A storage whose embedded torch.save bytes hide `payload` (legacy stream or zip archive)."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.payload,)


def _legacy_stream(obj) -> bytes:
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    return b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, info, obj, []))


def _zip_stream(obj) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
    return buf.getvalue()


@pytest.mark.parametrize("wrap", ["plain", "legacy", "zip"])
def test_hostile_payloads_run_nothing(tmp_path, wrap):
    marker = tmp_path / "pwned"
    hostile = _Hostile(marker)
    if wrap != "plain":
        payload = (_legacy_stream if wrap == "legacy" else _zip_stream)(hostile)
        hostile = (torch._utils._rebuild_tensor_v2, _Smuggled(payload))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"pose": {"joints3d_nonparam": [hostile]}}))
    for read in (load_pickle, read_clips, load_motion_file):
        with pytest.raises(UnsafePickleError) as error:
            read(path)
        message = str(error.value)
        assert "\n" not in message and "evil.pkl" in message and "system" in message
    assert not marker.exists()
