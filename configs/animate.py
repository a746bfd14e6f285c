"""`mtvjax animate`: reference image + driving motion → video. Variants: `7b`, `17b`.

  mtvjax animate --config configs/animate.py:7b --ref-image me.png \
      --motion ../shared/data/mtvcrafter_sample/sampled_data.pkl --out out.mp4 --panel

`checkpoints` name the converted Orbax folders (`mtvjax convert ...`, see its docstring):
`mvdit` (mvdit7b / mvdit17b), `tokenizer` (4dmot, or a trained 4DMoT run's checkpoints), `vae`
(vae_cogvideox / vae_wan) and, for the 17B, `clip`, `text_encoder` (umt5) with the umT5
`text_tokenizer` folder, or precomputed `prompt_embeddings` (.npz with `prompt`, `negative`).

Defaults are the released inference settings (docs/reference/mvdit7b.md §6, docs/reference/mvdit17b.md
§6): 7B — 512×512, 49 frames, DPM-Solver++ 50 steps, motion CFG 3.0, bf16, seed 6666; 17B —
the 512-class bucket of the image (resolution (0, 0)), 49 frames, Euler 50 steps (the no-LoRA
run), text CFG 6.0, no motion CFG (the release has no unconditional motion tokens), seed 42.

Long videos: more `frames` than `long.window` are generated window by window (`long.overlap`
frames shared; see mtvjax/sample/long_video.py and the README's trade-off note).
"""
import os

import ml_collections

from mtvjax.config import load_config
from mtvjax.models.mvdit import registry

MVDIT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mvdit.py")

DEFAULT_PROMPT = "The character is dancing."
NEGATIVE_PROMPT = "bad hands, extra limbs, fused fingers, blurry, low quality"


def get_config(variant: str = "7b") -> ml_collections.ConfigDict:
    if variant not in ("7b", "17b"):
        raise ValueError(f"unknown animate variant {variant!r}: use 7b or 17b")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.family = "cogvideox" if variant == "7b" else "wan"
    c.checkpoints = ml_collections.ConfigDict(dict(
        mvdit="", tokenizer="", vae="", clip="", text_encoder="", text_tokenizer=""))
    c.prompt = DEFAULT_PROMPT
    c.negative_prompt = NEGATIVE_PROMPT
    c.prompt_embeddings = ""       # .npz {prompt, negative}: [tokens, text_dim] (17B)
    c.text_dtype = "bfloat16"      # umT5 compute dtype (the released pipeline's)
    c.dtype = "bfloat16"           # transformer compute dtype (parameters cast to it)
    # The MV-DiT's attention kernel (mtvjax/models/layers/attention.py): auto (cuDNN flash on
    # GPU; else XLA, or chunked above 256 MiB of scores) | chunked | splash (TPU) | xla | cudnn
    # | reference; the chunks are chunked's query / key chunks and splash's blocks.
    c.model = ml_collections.ConfigDict(dict(attention="auto", attention_chunk=512,
                                             attention_kv_chunk=0))
    # The MV-DiT's devices: its parameters are restored shard by shard into the shardings the
    # training rules give (FSDP on `fsdp` × `context`, heads / MLP on `tensor`); `context`
    # splits the video tokens (heads must divide by context × tensor); -1: remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
    c.sharding_rules = load_config(f"{MVDIT_CONFIG}:tiny").sharding_rules   # configs/mvdit.py's
    c.seed = 6666 if variant == "7b" else 42

    c.motion = ml_collections.ConfigDict(dict(
        clip=0,                    # which clip of a multi-clip motion file
        start=0,                   # first motion frame used (of the pose file's frames)
        stride=1,                  # read every stride-th motion frame
        fps=0.0,                   # the pose file's frame rate; 0: the file's `fps`, if it
                                   # carries one, else video.model_fps (frame for frame)
        speed=1.0,                 # 2.0: the motion plays twice as fast (half the duration)
        mpjpe_warn_mm=50.0,        # warn when a window's 4DMoT reconstruction error is above
                                   # this (a judgement, not a released figure); 0: never
    ))
    recipe = registry.family(c.family).SAMPLER       # the family's released sampling run
    c.sampling = ml_collections.ConfigDict(dict(
        sampler=recipe.default_sampler,   # 7b: dpm | ddim; 17b: euler | unipc
        steps=recipe.steps,
        motion_cfg=recipe.motion_cfg,     # 1.0: no motion guidance
        text_cfg=recipe.text_cfg,         # 17B only
    ))
    c.video = ml_collections.ConfigDict(dict(
        frames=49,                 # output frames; more than long.window → long-video mode
        resolution=(512, 512) if variant == "7b" else (0, 0),   # (h, w); (0, 0): 17B bucket
        bucket_base=512,           # the bucket table's class when resolution is (0, 0)
        fps=20.0,                  # frame rate written into the output video
        model_fps=20.0,            # the rate the models generate at (released: 20 fps); the
                                   # motion is resampled to it (mtvjax/sample/driving.py)
    ))
    c.long = ml_collections.ConfigDict(dict(
        window=49,                 # frames per window (the released models: 49 = 13 latents)
        overlap=9,                 # frames shared by consecutive windows (1 + 4k)
        blend="hard",              # hard | ramp: how pinned overlap latents replace the model's
    ))
    c.vae = ml_collections.ConfigDict(dict(
        dtype="bfloat16",          # CogVideoX VAE compute dtype (the Wan VAE runs float32)
        tiling=True,               # CogVideoX spatial tiling (49 × 512 × 512 fits in memory)
    ))
    c.panel = ml_collections.ConfigDict(dict(
        enabled=False,             # also write OUT_panel.mp4 (reference, driving video,
        size=256,                  # skeleton in, skeleton reconstructed, output), panel height
    ))
    return c
