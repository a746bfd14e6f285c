"""MV-DiT latent shards from real videos and their pose files (the video VAE, CLIP and umT5).

  python -m data_pipeline.latents --config configs/data/real_videos.py:7b \
      --config.inputs='("poses/",)' --config.checkpoints.vae=CKPT/vae \
      [--config.checkpoints.tokenizer=CKPT/4dmot] --config.output=datasets/dance_7b
  python -m data_pipeline.latents --config configs/data/real_videos.py:tiny7b \
      --config.checkpoints.vae=/tmp/tiny7b/vae

Variants: `7b` / `17b` (49-frame windows, the 512-class buckets, the family's converted
checkpoints: empty paths must be given) and `tiny7b` / `tiny17b` (9-frame windows, 64-class
buckets, inputs defaulting to the MTVCrafter sample of `../shared/data` or $MTVJAX_SHARED_DATA;
for tests and trying the build with `python -m mtvjax.tools.random_checkpoints` sets).
What the build writes: `data_pipeline.video_latents`. Several processes split the clips by
MTVJAX_PROCESS_ID / MTVJAX_NUM_PROCESSES; `--config.merge_only=True` writes the dataset from
their finished parts.
"""
import os

import ml_collections

from data_pipeline.text_cache import DEFAULT_PROMPT, NEGATIVE_PROMPT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("MTVJAX_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
FAMILIES = {"7b": "cogvideox", "17b": "wan"}


def get_config(variant: str = "tiny7b") -> ml_collections.ConfigDict:
    size = variant.removeprefix("tiny")
    if size not in FAMILIES:
        raise ValueError(f"unknown variant {variant!r}: use 7b, 17b, tiny7b or tiny17b")
    tiny = variant.startswith("tiny")
    c = ml_collections.ConfigDict()
    c.name = f"real_videos_{variant}"
    c.family = FAMILIES[size]       # cogvideox (MV-DiT-7B) | wan (MV-DiT-17B)
    c.inputs = (os.path.join(SHARED, "mtvcrafter_sample", "sampled_data.pkl"),) if tiny else ()
    c.data_root = ""                # videos not found beside their pose file are looked up here
    c.output = os.path.join(REPO, "datasets", c.name)
    # pose reading (data_pipeline.readers.ingest): raw per-frame NLF files are split at gaps of
    # more than `max_gap` frames without a person, so windows never span a long gap
    c.ingest = ml_collections.ConfigDict(dict(missing="split", max_gap=4))
    c.frames = 9 if tiny else 49    # video frames per window: 8k + 1 (49 -> 13 latent frames)
    c.window_stride = 8 if tiny else 24   # frames between window starts
    c.windows_per_clip = 1 if tiny else 0  # at most this many windows per clip, evenly spread; 0 = all
    c.crops_per_window = 1          # seeded crops of each window to its nearest bucket
    c.base_resolution = 64 if tiny else 512   # bucket class (mtvjax.data.buckets.scale_buckets)
    c.checkpoints = ml_collections.ConfigDict(dict(
        vae="",                     # converted VAE of the family (mtvjax convert)
        clip="",                    # 17B: converted CLIP vision encoder
        text_encoder="",            # 17B: converted umT5 (or captions.embeddings)
        text_tokenizer="",          # 17B: the umT5 tokenizer folder
        tokenizer="",               # optional 4DMoT checkpoint: store motion tokens
    ))
    c.latents = ml_collections.ConfigDict(dict(
        renderer="vae",             # data_pipeline.latents: encode the video windows
        dtype="float32",            # float32 | float16 on disk (latent records hold <f4 or <f2)
        tiling=not tiny,            # 7B: tiled VAE encoding (memory); the 17B VAE encodes in chunks
    ))
    c.captions = ml_collections.ConfigDict(dict(
        path="",                    # 17B: captions.json {clip key, source id or video path: caption}
        default_prompt=DEFAULT_PROMPT,   # clips without a caption ("" = such clips are an error)
        negative_prompt=NEGATIVE_PROMPT,  # stored in the dataset's text cache too
        embeddings="",              # .npz {caption: [tokens, dim]} made elsewhere, instead of umT5
        dtype="bfloat16",           # umT5 compute dtype (the released pipeline's)
        batch_size=4,
        store_dtype="float32",      # text cache entries: float32 | float16
    ))
    c.seed = 0
    c.val_fraction = 0.25 if tiny else 0.02   # share of clips (seeded hash of the key) in `val`
    c.shard_records = 256
    c.merge_only = False            # only merge the finished parts into the dataset
    return c
