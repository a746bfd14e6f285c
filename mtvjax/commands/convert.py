"""`mtvjax convert MODEL --src FILE_OR_DIR --dst DIR ...`: PyTorch weights → Orbax checkpoint.

  mtvjax convert 4dmot --src 4DMoT/mp_rank_00_model_states.pt --dst ckpt/4dmot \
      --mean ../shared/data/mtvcrafter_sample/mean.npy --std ../shared/data/mtvcrafter_sample/std.npy
  mtvjax convert mvdit7b --src MV-DiT/CogVideoX/transformer --dst ckpt/mvdit7b \
      --joint_positions ../shared/data/mtvcrafter_sample/mean.npy   # --dtype float32: full size
  mtvjax convert mvdit7b --src CogVideoX-5b/transformer --source_format cogvideox --dst ckpt/base7b
  mtvjax convert mvdit17b --src MV-DiT/Wan --lora motion_lora.safetensors --dst ckpt/mvdit17b
  mtvjax convert mvdit17b --src Wan2.1-I2V-14B --source_format wan --dst ckpt/base17b
  mtvjax convert vae_cogvideox --src CogVideoX-5b/vae --dst ckpt/vae_cogvideox
  mtvjax convert vae_wan --src Wan2.1/Wan2.1_VAE.pth --dst ckpt/vae_wan
  mtvjax convert umt5 --src Wan2.1/models_t5_umt5-xxl-enc-bf16.pth --dst ckpt/umt5
  mtvjax convert clip --src Wan2.1/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth \
      --dst ckpt/clip
  mtvjax convert lpips --src alexnet-owt-7be5be79.pth --lin lpips/weights/v0.1/alex.pth \
      --dst ckpt/lpips
  mtvjax convert inception --src pt_inception-2015-12-05-6726825d.pth --dst ckpt/inception_fid
  mtvjax convert i3d --src rgb_imagenet.pt --dst ckpt/i3d_400
"""
from __future__ import annotations

from absl import flags

from mtvjax.errors import UsageError

flags.DEFINE_string("src", None, "Source weights: .pt/.bin (weights_only), .safetensors, or a "
                    "diffusers-style folder with sharded safetensors and an index.")
flags.DEFINE_string("dst", None, "New (or empty) folder for the Orbax checkpoint.")
flags.DEFINE_string("variant", None, "Config variant the weights must match (default per model: "
                    "released / 7b / 17b); empty: read the sizes from the file.")
flags.DEFINE_string("mean", None, "4dmot: normalisation mean .npy [24, 3] of the released model.")
flags.DEFINE_string("std", None, "4dmot: normalisation std .npy [24, 3].")
flags.DEFINE_string("joint_positions", None, "mvdit7b: dataset-mean joints .npy [24, 3] (mm) "
                    "that place the motion tokens of the 4D RoPE.")
flags.DEFINE_enum("source_format", "auto", ["auto", "mvdit", "cogvideox", "wan"],
                  "mvdit*: released MV-DiT weights, or the base model the paper starts from.")
flags.DEFINE_string("lora", None, "mvdit17b: LoRA file merged into the weights first.")
flags.DEFINE_string("lin", None, "lpips: the lpips package's linear heads (weights/v0.1/"
                    "alex.pth or vgg.pth) when --src is the torchvision backbone.")
flags.DEFINE_integer("seed", 0, "Seed of freshly initialised modules (base-model conversion).")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "mvdit*: dtype the parameters "
                  "are stored in (each tensor cast as it is converted; recorded in the config "
                  "JSON). bfloat16 halves the checkpoint and the memory of loading it.")
flags.mark_flags_as_required(["src", "dst"])
FLAGS = flags.FLAGS

DEFAULT_VARIANTS = {"4dmot": "released", "mvdit7b": "7b", "mvdit17b": "17b"}


def _variant(model: str):
    variant = DEFAULT_VARIANTS[model] if FLAGS.variant is None else FLAGS.variant
    return variant or None


def convert_4dmot():
    from mtvjax.train.fourdmot_released import convert_4dmot as convert
    if not (FLAGS.mean and FLAGS.std):
        raise UsageError("4dmot needs --mean and --std (the released normalisation statistics)")
    s = convert(FLAGS.src, FLAGS.dst, FLAGS.mean, FLAGS.std, _variant("4dmot"))
    return (f"{s['tensors']} tensors, {s['trainable_params']:,} trainable parameters, "
            f"codebook {s['codebook']}, variant {s['variant']}")


def convert_mvdit7b():
    from mtvjax.models.mvdit.cogvideox.convert import convert_mvdit7b as convert
    source_format = {"mvdit": "mvdit7b"}.get(FLAGS.source_format, FLAGS.source_format)
    if source_format == "wan":
        raise UsageError("mvdit7b converts released MV-DiT-7B or CogVideoX weights, not Wan")
    return str(convert(FLAGS.src, FLAGS.dst, _variant("mvdit7b"), source_format, FLAGS.seed,
                       FLAGS.joint_positions, save_dtype=FLAGS.dtype))


def convert_mvdit17b():
    from mtvjax.models.mvdit.wan import convert as module
    if FLAGS.source_format == "cogvideox":
        raise UsageError("mvdit17b converts released MV-DiT-17B or Wan weights, not CogVideoX")
    convert = module.convert_wan_base if FLAGS.source_format == "wan" else module.convert_mvdit17b
    return str(convert(FLAGS.src, FLAGS.dst, lora=FLAGS.lora, variant=_variant("mvdit17b"),
                       seed=FLAGS.seed, save_dtype=FLAGS.dtype))


def _feature_net(kind: str):
    def convert():
        from mtvjax.evaluate.feature_nets.convert import convert_feature_net
        s = convert_feature_net(kind, FLAGS.src, FLAGS.dst, lin=FLAGS.lin)
        details = ", ".join(f"{k} {s[k]}" for k in ("net", "width_divisor", "num_classes")
                            if k in s)
        return (f"{kind}: {s['tensors']} tensors, {s['params']:,} values ({details}), "
                f"{len(s['skipped'])} skipped")
    return convert


def _encoder(name: str, default_variant: str):
    def convert():
        import importlib
        module = importlib.import_module(f"mtvjax.models.encoders.convert_{name}")
        fn = getattr(module, f"convert_{name}")
        variant = default_variant if FLAGS.variant is None else (FLAGS.variant or None)
        return str(fn(FLAGS.src, FLAGS.dst, variant))
    return convert


def _vae(name: str, default_variant: str):
    def convert():
        import importlib
        module = importlib.import_module(f"mtvjax.models.vae.{name.removeprefix('vae_')}.convert")
        variant = default_variant if FLAGS.variant is None else (FLAGS.variant or None)
        summary = getattr(module, f"convert_{name}")(FLAGS.src, FLAGS.dst, variant)
        return f"{name}: {summary.get('tensors', '?')} tensors, variant {summary.get('variant')}"
    return convert


CONVERTERS = {"4dmot": convert_4dmot, "mvdit7b": convert_mvdit7b, "mvdit17b": convert_mvdit17b,
              "vae_cogvideox": _vae("vae_cogvideox", "cogvideox-5b"),
              "vae_wan": _vae("vae_wan", "wan2.1"),
              "umt5": _encoder("umt5", "umt5-xxl"), "clip": _encoder("clip_vision", "clip-vit-h-14"),
              "lpips": _feature_net("lpips"), "inception": _feature_net("inception"),
              "i3d": _feature_net("i3d")}


def main(argv):
    if len(argv) != 2 or argv[1] not in CONVERTERS:
        got = " ".join(argv[1:]) or "nothing"
        raise UsageError(f"expected one model name out of {', '.join(CONVERTERS)}, got {got}")
    summary = CONVERTERS[argv[1]]()
    print(f"wrote {FLAGS.dst} (step 0): {summary}")
