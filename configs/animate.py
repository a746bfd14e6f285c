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
import ml_collections

from mtvjax.models.mvdit import registry

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
    c.seed = 6666 if variant == "7b" else 42

    c.motion = ml_collections.ConfigDict(dict(
        clip=0,                    # which clip of a multi-clip motion file
        start=0,                   # first motion frame used
        stride=1,                  # read every stride-th motion frame
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
        fps=20.0,
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
