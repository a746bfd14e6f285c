"""Tiny random-weight checkpoint sets for `mtvjax animate`, in the converters' exact formats.

    python -m mtvjax.tools.random_checkpoints --family cogvideox --out /tmp/tiny7b
    mtvjax animate --config configs/animate.py:7b --ref-image me.png --motion clip.npy \
        --out out.mp4 $(cat /tmp/tiny7b/flags.txt)

Each set holds the checkpoints one family needs, sized to fit together (4DMoT code width = the
MV-DiT's motion width, unconditional motion tokens for `window` frames), written the way
`mtvjax convert` and `mtvjax train` write them, plus `flags.txt` with the `--config.*`
overrides that point an animate config at them. The weights are random: the videos are noise,
but every stage of the real pipeline runs. Used by the tests and for trying the command out.
With `model_fields={"conditioning": "isa"}` (`--isa`) the MV-DiT is ISA-conditioned and the set
has no 4DMoT (animate does not need one then).
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import jax
import ml_collections
import numpy as np

from mtvjax.checkpoint.manager import Checkpointer, config_to_json
from mtvjax.config import load_config
from mtvjax.models.mvdit import registry

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
# The tiny 17B's conditioning widths, matching the tiny umT5 and CLIP presets.
TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 32


def random_like(abstract, seed: int) -> dict:
    """Random float32 arrays for a tree of ShapeDtypeStructs, without compiling the model's init:
    norm scales 1, biases 0, other weights N(0, 1/fan_in) with fan_in = all but the last axis."""
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        name = str(getattr(path[-1], "key", path[-1])).lower()
        shape = tuple(spec.shape)
        if any(k in name for k in ("scale", "gamma")) or name == "weight":
            return np.ones(shape, np.float32)
        if "bias" in name or name == "beta":
            return np.zeros(shape, np.float32)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 2500
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def _save(dst: str, tree: dict, config_json: dict) -> str:
    checkpointer = Checkpointer(dst, keep=None)
    checkpointer.save(0, tree, None, config_json, force=True)
    checkpointer.wait()
    checkpointer.close()
    return dst


def write_tokenizer(dst: str, code_dim: int, seed: int) -> str:
    """A `configs/4dmot.py:tiny` 4DMoT (code width `code_dim`) with a random codebook."""
    from mtvjax.data.stats import compute_stats
    from mtvjax.data.synthetic_motion import SyntheticMotionSource
    from mtvjax.models.fourdmot.build import build_model
    from mtvjax.train import fourdmot_step as steps
    config = load_config(os.path.join(CONFIGS, "4dmot.py:tiny"))
    config.model.code_dim = code_dim
    model = build_model(config.model)
    source = SyntheticMotionSource(4, (60, 60), seed=seed)
    stats = compute_stats(source[i].motion for i in range(len(source)))
    tx = steps.make_optimizer(config)
    abstract = steps.abstract_state(config, model, tx)
    params = random_like(abstract.params, seed)
    quantizer = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract.quantizer)
    quantizer["codebook"] = np.random.default_rng(seed + 1).standard_normal(
        quantizer["codebook"].shape).astype(np.float32)
    quantizer["initialized"] = np.asarray(True)
    state = abstract.replace(step=np.int32(0), params=params, opt_state=tx.init(params),
                             quantizer=quantizer,
                             stats={k: np.asarray(v, np.float32) for k, v in stats.items()},
                             rng=jax.random.PRNGKey(seed), skipped_samples=np.int32(0))
    return _save(dst, state.replace(quantizer=quantizer), config_to_json(config))


def write_cogvideox(out: str, window: int, seed: int, model_fields: dict) -> dict:
    from mtvjax.models.mvdit.cogvideox.convert import save_params
    from mtvjax.models.mvdit.cogvideox import model as mv
    from mtvjax.models.vae.cogvideox import model as vc
    config = load_config(os.path.join(CONFIGS, "mvdit.py:tiny"))
    latent_frames = 1 + (window - 1) // 4
    width = config.model.num_heads * config.model.head_dim
    config.model.uncond_motion_shape = (latent_frames * config.model.num_joints, width)
    config.model.update(model_fields)
    model = mv.from_config(config)
    paths = {"mvdit": os.path.join(out, "mvdit"), "tokenizer": os.path.join(out, "tokenizer"),
             "vae": os.path.join(out, "vae")}
    save_params(paths["mvdit"], random_like(mv.abstract_params(model), seed), config)
    if model.conditioning == "isa":     # raw motion: no 4DMoT needed
        del paths["tokenizer"]
    vae = vc.CogVideoXVAE(vc.get_config("tiny"))
    vae_config = ml_collections.ConfigDict({"variant": "tiny", "vae": dict(vae.config)})
    _save(paths["vae"], {"params": random_like(vae.abstract_params(), seed + 2)},
          config_to_json(vae_config))
    if "tokenizer" in paths:
        write_tokenizer(paths["tokenizer"], width, seed + 3)
    return paths


def write_wan(out: str, window: int, seed: int, model_fields: dict,
              text_encoder: bool = True) -> dict:
    from mtvjax.checkpoint.converted import save_converted
    from mtvjax.models.mvdit.wan.convert import save_params
    from mtvjax.models.encoders import clip_vision
    from mtvjax.models.mvdit.wan import model as mvdit_wan
    from mtvjax.models.mvdit.wan.config import wan_config
    from mtvjax.models.encoders import umt5
    from mtvjax.models.vae.wan import model as vae_wan
    latent_frames = 1 + (window - 1) // 4
    config = wan_config("tiny17b", text_dim=TINY_TEXT_DIM, image_dim=TINY_IMAGE_DIM,
                        uncond_motion=True, num_uncond_motion_tokens=latent_frames * 24,
                        **model_fields)
    paths = {k: os.path.join(out, k) for k in ("mvdit", "tokenizer", "vae", "clip")}
    save_params(paths["mvdit"], random_like(mvdit_wan.param_shapes(config), seed), config,
                "tiny17b", {"save_dtype": "float32", "random": True})
    vae_config = vae_wan.wan_vae_config("tiny", z_dim=16,
                                        latents_mean=list(vae_wan.WAN21_LATENTS_MEAN),
                                        latents_std=list(vae_wan.WAN21_LATENTS_STD))
    report = {"variant": "tiny", "random": True}
    save_converted(paths["vae"], vae_wan.FAMILY, vae_config,
                   random_like(vae_wan.param_shapes(vae_config), seed + 1), report)
    clip_config = clip_vision.clip_vision_config("tiny")
    save_converted(paths["clip"], clip_vision.FAMILY, clip_config,
                   random_like(clip_vision.param_shapes(clip_config), seed + 2), report)
    if config.uses_isa:                 # raw motion: no 4DMoT needed
        del paths["tokenizer"]
    else:
        write_tokenizer(paths["tokenizer"], config.motion_dim, seed + 3)
    rng = np.random.default_rng(seed)
    paths["prompt_embeddings"] = os.path.join(out, "prompt_embeddings.npz")
    np.savez(paths["prompt_embeddings"], prompt=rng.normal(size=(5, TINY_TEXT_DIM)),
             negative=rng.normal(size=(7, TINY_TEXT_DIM)))
    if text_encoder:
        text_config = umt5.umt5_config("tiny", dim=TINY_TEXT_DIM)
        paths["text_encoder"] = os.path.join(out, "text_encoder")
        save_converted(paths["text_encoder"], umt5.FAMILY, text_config,
                       random_like(umt5.param_shapes(text_config), seed + 4),
                       {**report, "fingerprint": f"random-{seed}"})
        paths["text_tokenizer"] = write_word_tokenizer(os.path.join(out, "text_tokenizer"))
    return paths


def write_word_tokenizer(dst: str) -> str:
    """A small word-level tokenizer folder loadable by `transformers.AutoTokenizer` (needs the
    `text` extra), appending EOS like umT5's."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    words = ("the a character woman man is are dancing runs walks on beach waves sunset "
             "bad hands extra limbs fused fingers blurry low quality").split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(dst)
    return dst


SET_WRITERS = {"cogvideox": write_cogvideox, "wan": write_wan}   # by registry family name


def write_set(out: str, family: str, window: int = 17, seed: int = 0,
              text_encoder: bool | None = None, model_fields: dict | None = None) -> dict:
    """Writes a tiny random set under `out`; returns {checkpoint name: path} and `flags`.
    `model_fields` override MV-DiT model fields (e.g. {"motion_pe": "dynamic"}).
    `text_encoder` (17B): also a tiny umT5 + tokenizer (default: when transformers is
    installed); otherwise the set uses precomputed prompt embeddings."""
    if text_encoder is None:
        text_encoder = importlib.util.find_spec("transformers") is not None
    fam = registry.family(family)
    extra = {"text_encoder": text_encoder} if fam.HAS_TEXT else {}
    paths = SET_WRITERS[fam.NAME](out, window, seed, dict(model_fields or {}), **extra)
    flags = [f"--config.checkpoints.{k}={v}" for k, v in paths.items() if k != "prompt_embeddings"]
    if "prompt_embeddings" in paths and "text_encoder" not in paths:
        flags.append(f"--config.prompt_embeddings={paths['prompt_embeddings']}")
    flags += ["--config.dtype=float32", "--config.vae.dtype=float32",
              f"--config.long.window={window}", "--config.video.resolution=(64,64)"]
    with open(os.path.join(out, "flags.txt"), "w") as f:
        f.write(" ".join(flags) + "\n")
    return {**paths, "flags": flags}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=registry.FAMILIES, required=True)
    parser.add_argument("--out", required=True, help="new or empty folder")
    parser.add_argument("--window", type=int, default=17, help="frames per window (8k + 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isa", action="store_true",
                        help='an ISA-conditioned MV-DiT (model.conditioning="isa"), no 4DMoT')
    args = parser.parse_args(argv)
    result = write_set(args.out, args.family, args.window, args.seed,
                       model_fields={"conditioning": "isa"} if args.isa else None)
    print(" ".join(result["flags"]))


if __name__ == "__main__":
    main()
