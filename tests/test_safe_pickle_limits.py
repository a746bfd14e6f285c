"""Load bounds: shared-reference pickles, repeated arrays, npz and image decompression bombs."""
import pickle
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from data_pipeline.readers.ingest import load_motion_file
from mtvjax.data.load_limits import LoadLimits, read_npz
from mtvjax.data.motion_errors import LimitExceededError, MotionFormatError
from mtvjax.data.motion_files import load_clips, read_clips
from mtvjax.data.safe_pickle import load_pickle


def _shared_nesting(depth: int):
    node = [np.zeros((2, 24, 3), np.float32)]
    for _ in range(depth):
        node = [node, node, (node, node), {"a": node}]
    return node


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("limits", [LoadLimits(), LoadLimits(max_depth=500)])
def test_shared_reference_nesting_is_refused_quickly(tmp_path, limits):
    path = tmp_path / "deep.pkl"
    path.write_bytes(pickle.dumps({"pose": _shared_nesting(70)}))
    assert path.stat().st_size < 64 * 1024
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(LimitExceededError) as error:
        load_pickle(path, limits)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 5.0 and peak < 64 * 2**20  # a hang guard, not a benchmark
    message = _one_line(error)
    assert str(path) in message and ("depth" in message or "entries" in message
                                     or "bytes" in message)


def test_shared_references_within_bounds_still_load(tmp_path):
    frame = np.ones((3, 24, 3), np.float32)
    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps([{"pose": frame}, {"pose": frame}]))
    clips, errors = load_clips(path)
    assert errors == [] and [c.motion.shape for c in clips] == [(3, 24, 3)] * 2


def test_repeated_array_is_refused_by_the_byte_bound(tmp_path):
    array = np.zeros((1, 3600, 24, 3), np.float32)  # 1 MB, referenced 2,000 times
    path = tmp_path / "repeated.pkl"
    path.write_bytes(pickle.dumps({"poses": {"joints3d_nonparam": [array] * 2000}}))
    assert path.stat().st_size < 2 * 2**20
    for read in (load_pickle, read_clips, load_motion_file):
        with pytest.raises(LimitExceededError) as error:
            read(path)
        assert str(path) in _one_line(error) and "bytes" in str(error.value)
    with pytest.raises(LimitExceededError, match="repeated.pkl.*entries"):
        load_pickle(path, LoadLimits(max_bytes=1 << 40, max_items=100))


def _npy_header(shape, dtype="<f4") -> bytes:
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def test_npz_bombs_are_refused(tmp_path):
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("joints.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((8 * 2**20, 1)))
            chunk = bytes(2**20)
            for _ in range(32):
                member.write(chunk)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(LimitExceededError) as error:
        read_npz(bomb, LoadLimits(max_bytes=16 * 2**20))
    assert "bomb.npz" in _one_line(error)

    liar = tmp_path / "liar.npz"  # a header declaring a terabyte over a few bytes of data
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("joints.npy", _npy_header((2**38, 24, 3)) + bytes(64))
    for read in (read_npz, read_clips, load_motion_file):
        with pytest.raises(MotionFormatError) as error:
            read(liar)
        assert "liar.npz" in _one_line(error)


def test_npy_header_larger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "short.npy"
    path.write_bytes(_npy_header((2**20, 24, 3)) + bytes(16))
    with pytest.raises(MotionFormatError, match="short.npy.*declares"):
        read_clips(path)


@pytest.mark.parametrize("pixels", [40 * 40, 100 * 100])  # the warning range, the error range
def test_image_decompression_bomb_is_one_line(tmp_path, monkeypatch, pixels):
    from PIL import Image

    from mtvjax.sample.reference_image import load_image
    side = int(pixels ** 0.5)
    path = tmp_path / "huge.png"
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError) as error:
        load_image(path)
    assert "huge.png" in _one_line(error) and "pixels" in str(error.value)
