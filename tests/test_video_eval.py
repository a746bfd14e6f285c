"""`mtvjax eval --config configs/eval_video.py:smoke` end to end on a temporary benchmark layout
(mp4s and PNG-frame folders written here) with tiny random feature nets converted from torch
state dicts in the public layouts; clear errors for bad layouts and missing weights."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import av
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_config
from mtvjax.evaluate.feature_nets.convert import convert_feature_net
from mtvjax.evaluate import video_eval as ve
from mtvjax.evaluate import video_metrics as vm
from test_video_metrics import TorchFIDInception, TorchI3D, lpips_files, randomize

CONFIG = f"{REPO_ROOT / 'configs' / 'eval_video.py'}"
FRAMES, H, W = 17, 32, 40
# XLA's CPU backend spends seconds optimising the tiny nets' convolutions; the unoptimised
# programs compute the same values (only in the subprocesses started here).
ENV = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_backend_optimization_level=0").strip()}


def _mtvjax(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "mtvjax.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=600, env=ENV)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _frames(seed, n=FRAMES, h=H, w=W):
    """Smooth moving colour patterns, uint8 [n, h, w, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 6, 3)
    t = np.arange(n)[:, None, None, None] * 0.2
    img = 0.5 + 0.4 * np.sin(6 * x[..., None] + 4 * y[..., None] + phase + t)
    return (img * 255).astype(np.uint8)


def _noisy(frames, seed, amount=12):
    noise = np.random.default_rng(seed).integers(-amount, amount + 1, frames.shape)
    return np.clip(frames.astype(int) + noise, 0, 255).astype(np.uint8)


def write_mp4(path, frames):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "12"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_pngs(folder, frames):
    os.makedirs(folder)
    for i, f in enumerate(frames):
        iio.imwrite(os.path.join(folder, f"{i}.png"), f)   # 0.png, 1.png, ..., 10.png


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """data root with generated/ and ground_truth/ (3 clips, mixed formats) and weights/."""
    root = tmp_path_factory.mktemp("bench")
    gen, gt = root / "generated", root / "ground_truth"
    gen.mkdir()
    gt.mkdir()
    a, b, c = _frames(0), _frames(1), _frames(2)
    write_mp4(gen / "clip_a.mp4", _noisy(np.concatenate([a, a[-1:]]), 10))  # one frame longer
    write_pngs(gt / "clip_a", a)
    write_pngs(gen / "clip_b", _noisy(b, 11))
    write_pngs(gt / "clip_b", b)
    write_pngs(gen / "clip_c", _frames(2, h=48, w=56))                      # another size
    write_mp4(gt / "clip_c.mp4", c)
    (gen / "notes.txt").write_text("not a clip")
    write_tiny_feature_nets(root / "weights")
    return root


def write_tiny_feature_nets(weights):
    """Tiny random LPIPS (through `mtvjax convert`), InceptionV3 and I3D checkpoints under
    `weights`, named as configs/eval_video.py expects them."""
    weights.mkdir()
    _, backbone, heads = lpips_files(weights, "alex", 16)
    _mtvjax("convert", "lpips", "--src", backbone, "--lin", heads, "--dst", weights / "lpips_alex")
    torch.save(randomize(TorchFIDInception(16, num_classes=8)).state_dict(), weights / "inc.pth")
    convert_feature_net("inception", weights / "inc.pth", weights / "inception_fid")
    torch.save(randomize(TorchI3D(8, num_classes=8, pool_kernel=(2, 1, 1))).state_dict(),
               weights / "i3d.pt")
    convert_feature_net("i3d", weights / "i3d.pt", weights / "i3d_400")


def _config(bench, **overrides):
    config = load_config("eval_video.py", "smoke")
    config.data_root = str(bench)
    config.weights_root = str(bench / "weights")
    config.update(overrides)
    return config


def test_smoke_eval_writes_report_and_table(bench, tmp_path):
    report_path = tmp_path / "report.json"
    out = _mtvjax("eval", "--config", f"{CONFIG}:smoke", f"--config.data_root={bench}",
                  f"--config.weights_root={bench / 'weights'}", f"--config.report={report_path}")
    report = json.loads(report_path.read_text())
    assert report["clips"] == 3 and report["frames"] == 3 * FRAMES
    for m in ve.METRICS:
        assert np.isfinite(report["metrics"][m]), (m, report["metrics"])
    assert report["metrics"]["ssim"] < 1 and report["metrics"]["psnr"] > 15
    for m in ("fid", "fvd", "fid_vid", "lpips"):
        assert report["metrics"][m] > 0
    assert set(report["per_clip"]) == {"clip_a", "clip_b", "clip_c"}
    assert all(r["segments"] == 1 for r in report["per_clip"].values())
    notes = "\n".join(report["notes"])
    assert "clip_a: 18 generated vs 17 ground-truth frames" in notes
    assert "clip_c: generated 56x48 resized" in notes
    assert report["weights"]["i3d"]["width_divisor"] == 8
    # PNG vs PNG is lossless: the clip's PSNR / SSIM are those of the written frames
    b, gb = _frames(1) / 255.0, _noisy(_frames(1), 11) / 255.0
    assert report["per_clip"]["clip_b"]["psnr"] == pytest.approx(float(np.mean(vm.psnr(gb, b))),
                                                                 abs=1e-3)
    assert report["per_clip"]["clip_b"]["ssim"] == pytest.approx(float(np.mean(vm.ssim(gb, b))),
                                                                 abs=1e-4)
    table = out.stdout
    for word in ("benchmark", "psnr", "ssim", "lpips", "fid", "fvd", "fid_vid", "smoke",
                 "clip_b", "note:"):
        assert word in table, table


def test_identical_folders_and_frame_order(bench, tmp_path):
    config = _config(bench, ground_truth_dir="generated", metrics=("psnr", "ssim"),
                     report=str(tmp_path / "r.json"))
    report = ve.evaluate(config)
    assert report["metrics"]["psnr"] == float("inf") and report["metrics"]["ssim"] == 1.0
    ve.write_report(report, config.report)
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["psnr"] == "inf"
    clip = ve.find_clips(str(bench / "ground_truth"), "gt")["clip_a"]
    np.testing.assert_array_equal(ve.read_clip(clip), _frames(0))   # 0, 1, ..., 9, 10, ...


def test_missing_folder(bench):
    with pytest.raises(FileNotFoundError, match=r"generated_dir .*nowhere: folder not found"):
        ve.evaluate(_config(bench, generated_dir="nowhere"))


def test_clip_missing_on_one_side(bench, tmp_path):
    shutil.copytree(bench / "generated", tmp_path / "gen")
    shutil.rmtree(tmp_path / "gen" / "clip_b")
    os.makedirs(tmp_path / "gen" / "extra")
    iio.imwrite(tmp_path / "gen" / "extra" / "0.png", _frames(3, 1)[0])
    with pytest.raises(ValueError, match="missing from generated_dir: clip_b; "
                                         "missing from ground_truth_dir: extra"):
        ve.evaluate(_config(bench, generated_dir=str(tmp_path / "gen")))


def test_missing_weights(bench):
    with pytest.raises(FileNotFoundError, match=r"i3d_nope: i3d weights not found .*"
                                                r"mtvjax convert i3d"):
        ve.evaluate(_config(bench, metrics=("psnr", "fvd"),
                            weights={"lpips": "", "inception": "", "i3d": "i3d_nope"}))
    with pytest.raises(FileNotFoundError, match="no lpips weights configured"):
        ve.evaluate(_config(bench, metrics=("lpips",),
                            weights={"lpips": "", "inception": "", "i3d": ""}))
    with pytest.raises(ValueError, match="holds a 'inception' net, expected 'i3d'"):
        ve.evaluate(_config(bench, metrics=("fvd",),
                            weights={"lpips": "", "inception": "", "i3d": "inception_fid"}))
    with pytest.raises(ValueError, match="unknown metrics"):
        ve.evaluate(_config(bench, metrics=("psnr", "vmaf")))
