"""Video evaluation of generated clips against ground truth. Variants: `tiktok`, `fashion`, `smoke`.

  mtvjax eval --config configs/eval_video.py:tiktok --config.data_root=/data/tiktok_eval \
      --config.weights_root=/ckpt/feature_nets

`data_root/generated_dir` and `data_root/ground_truth_dir` hold one mp4 or one folder of frame
images per clip, paired by name (see `mtvjax/evaluate/video_eval.py`). The feature nets are
converted once from the public PyTorch weights (nothing is downloaded at run time):

  mtvjax convert lpips --src alexnet-owt-7be5be79.pth --lin lpips/weights/v0.1/alex.pth \
      --dst /ckpt/feature_nets/lpips_alex
  mtvjax convert inception --src pt_inception-2015-12-05-6726825d.pth \
      --dst /ckpt/feature_nets/inception_fid
  mtvjax convert i3d --src rgb_imagenet.pt --dst /ckpt/feature_nets/i3d_400

Relative `weights.*` paths are under `weights_root`, relative folders under `data_root`.
"""
import ml_collections

METRICS = ("psnr", "ssim", "lpips", "fid", "fvd", "fid_vid")

# Placeholder locations: the benchmark's generated and ground-truth clips under data_root.
BENCHMARKS = {
    "tiktok": dict(data_root="/data/eval/tiktok", generated_dir="generated",
                   ground_truth_dir="ground_truth"),
    "fashion": dict(data_root="/data/eval/fashion", generated_dir="generated",
                    ground_truth_dir="ground_truth"),
    "smoke": dict(data_root="/tmp/mtvjax_video_smoke", generated_dir="generated",
                  ground_truth_dir="ground_truth"),
}


def get_config(name: str = "tiktok") -> ml_collections.ConfigDict:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown eval_video config {name!r}: use {', '.join(BENCHMARKS)}")
    c = ml_collections.ConfigDict()
    c.name = name
    c.update(BENCHMARKS[name])
    c.metrics = METRICS
    c.weights_root = "/ckpt/feature_nets"
    c.weights = ml_collections.ConfigDict(dict(
        lpips="lpips_alex", inception="inception_fid", i3d="i3d_400"))
    c.max_frames = 0                 # 0: every frame of each clip
    c.frame_size = ()                # (H, W): resize both sides first; (): generated -> GT size
    c.batch_size = 16                # frames per LPIPS / Inception / PSNR-SSIM call
    c.video_batch_size = 4           # segments per I3D call
    c.fid_resolution = 299           # pytorch-fid resizes every frame to 299 x 299
    c.fid_frame_stride = 1           # FID on every k-th frame
    c.fvd_resolution = 224           # I3D input size
    c.fvd_frames = 16                # frames per FVD segment
    c.fvd_stride = 16                # segment start every k frames (16: non-overlapping)
    c.fvd_features = "logits"        # I3D output for FVD: logits (400, the TF FVD) or pool (1024)
    c.fid_vid_features = "pool"      # I3D output averaged per video for FID-VID
    c.report = ""                    # JSON report; default <data_root>/eval_video_<name>.json
    if name == "smoke":
        # Tiny inputs for tests with tiny converted nets: the smallest InceptionV3 input, and
        # I3D on 32 x 32 frames (its last feature map is then 1 x 1).
        c.weights_root = "/tmp/mtvjax_video_smoke/weights"
        c.batch_size = 8
        c.fid_resolution = 75
        c.fvd_resolution = 32
    return c
