"""MV-DiT-17B condition encoders: umT5 and CLIP ViT-H/14 vision tower against transformers at
tiny random configs, weight conversion (transformers / Wan / open_clip layouts, errors naming
keys), the pipeline's CLIP image preprocessing, the prompt-embedding cache, and the real presets'
parameter counts."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from data_pipeline import text_cache as TC  # noqa: E402
from mtvjax.data import text_embeddings as TE  # noqa: E402
from mtvjax.checkpoint.converted import checkpoint_id  # noqa: E402
from mtvjax.models.encoders import convert_clip_vision as EC  # noqa: E402
from mtvjax.models.encoders import convert_umt5 as EU  # noqa: E402
from mtvjax.models.encoders import load as L  # noqa: E402
from mtvjax.checkpoint.conversion import ConversionError  # noqa: E402
from mtvjax.models.encoders import clip_vision as C  # noqa: E402
from mtvjax.models.encoders import image_preprocess as P  # noqa: E402
from mtvjax.models.encoders import umt5 as T  # noqa: E402

RTOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def flat(tree) -> dict:
    from flax import traverse_util
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


# ----------------------------------------------------------------------------------------------
# Fixtures: tiny random transformers models, saved the way transformers saves them
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_umt5(tmp_path_factory):
    torch.manual_seed(0)
    # real bucket settings (32 buckets, max distance 128) so sequences of 150 reach every bucket
    cfg = transformers.UMT5Config(vocab_size=99, d_model=32, d_kv=8, num_heads=4, d_ff=48,
                                  num_layers=2, relative_attention_num_buckets=32,
                                  relative_attention_max_distance=128,
                                  feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model = transformers.UMT5EncoderModel(cfg).eval()
    with torch.no_grad():   # norms away from 1 so a misplaced scale shows
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf_umt5")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def umt5_converted(hf_umt5, tmp_path_factory):
    _, folder = hf_umt5
    dst = tmp_path_factory.mktemp("ckpt") / "umt5"
    summary = EU.convert_umt5(folder, dst, variant=None)
    config, params = L.load_umt5(dst)
    return config, params, summary, dst


def _hf_clip(tmp_path_factory, act: str, with_projection: bool, seed: int):
    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=3, num_attention_heads=4, image_size=28,
                                        patch_size=7, hidden_act=act, projection_dim=16)
    cls = (transformers.CLIPVisionModelWithProjection if with_projection
           else transformers.CLIPVisionModel)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(f"hf_clip_{act}")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    return _hf_clip(tmp_path_factory, "gelu", False, 1)


# ----------------------------------------------------------------------------------------------
# umT5
# ----------------------------------------------------------------------------------------------


def test_relative_buckets_match_torch():
    from transformers.models.umt5.modeling_umt5 import UMT5Attention
    for buckets, distance in ((32, 128), (8, 16)):
        cfg = transformers.UMT5Config(relative_attention_num_buckets=buckets,
                                      relative_attention_max_distance=distance, num_heads=1,
                                      d_model=8, d_kv=8)
        attn = UMT5Attention(cfg, has_relative_attention_bias=True)
        rel = torch.arange(700)[None, :] - torch.arange(700)[:, None]
        ref = attn._relative_position_bucket(rel).numpy()
        np.testing.assert_array_equal(T.relative_position_buckets(700, 700, buckets, distance),
                                      ref)


def test_umt5_parity_with_padding_mask(hf_umt5, umt5_converted):
    model, _ = hf_umt5
    config, params, summary, _ = umt5_converted
    assert summary["naming"] == "transformers" and summary["params"] == T.count_params(params)
    # each layer keeps its own relative-position table
    tables = np.asarray(params["layers"]["attn"]["relative_attention_bias"])
    assert tables.shape == (2, 32, 4) and not np.allclose(tables[0], tables[1])
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 99, (2, 150))
    mask = np.ones((2, 150), np.int64)
    mask[1, 37:] = 0
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    out = T.UMT5Encoder(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    err = rel_err(out, ref)
    assert err < RTOL, err
    emb, lens = T.encode(params, ids, mask, config)
    assert list(np.asarray(lens)) == [150, 37]
    np.testing.assert_array_equal(np.asarray(emb)[1, 37:], 0)
    assert rel_err(np.asarray(emb)[1, :37], ref[1, :37]) < RTOL
    # bf16 compute runs and stays close
    out16 = T.UMT5Encoder(T.umt5_config(config, dtype="bfloat16")).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert out16.dtype == jnp.bfloat16 and rel_err(out16.astype(jnp.float32), ref) < 0.05


def _wan_t5_state_dict(hf_sd: dict) -> dict:
    """The original Wan T5Encoder naming of a transformers state dict."""
    out = {"token_embedding.weight": hf_sd.get("encoder.embed_tokens.weight",
                                               hf_sd.get("shared.weight"))}
    layers = sorted({int(k.split(".")[2]) for k in hf_sd if k.startswith("encoder.block.")})
    for i in layers:
        b = f"encoder.block.{i}.layer"
        out[f"blocks.{i}.norm1.weight"] = hf_sd[f"{b}.0.layer_norm.weight"]
        out[f"blocks.{i}.norm2.weight"] = hf_sd[f"{b}.1.layer_norm.weight"]
        for p in "qkvo":
            out[f"blocks.{i}.attn.{p}.weight"] = hf_sd[f"{b}.0.SelfAttention.{p}.weight"]
        out[f"blocks.{i}.pos_embedding.embedding.weight"] = hf_sd[
            f"{b}.0.SelfAttention.relative_attention_bias.weight"]
        out[f"blocks.{i}.ffn.gate.0.weight"] = hf_sd[f"{b}.1.DenseReluDense.wi_0.weight"]
        out[f"blocks.{i}.ffn.fc1.weight"] = hf_sd[f"{b}.1.DenseReluDense.wi_1.weight"]
        out[f"blocks.{i}.ffn.fc2.weight"] = hf_sd[f"{b}.1.DenseReluDense.wo.weight"]
    out["norm.weight"] = hf_sd["encoder.final_layer_norm.weight"]
    return out


def test_umt5_wan_layout_bf16_pth(hf_umt5, umt5_converted, tmp_path):
    model, _ = hf_umt5
    config, params, _, _ = umt5_converted
    sd = {k: v.to(torch.bfloat16) for k, v in _wan_t5_state_dict(model.state_dict()).items()}
    torch.save(sd, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    wan_config, wan_params, report = EU.convert_umt5_state_dict(
        tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", config)
    assert report["naming"] == "wan" and report["skipped"] == 0
    ref = flat(params)
    for path, value in flat(wan_params).items():
        bf = np.asarray(jnp.asarray(ref[path]).astype(jnp.bfloat16).astype(jnp.float32))
        np.testing.assert_array_equal(value, bf, err_msg="/".join(path))


def test_umt5_conversion_errors_name_keys(hf_umt5, umt5_converted, tmp_path):
    from safetensors.torch import save_file
    model, _ = hf_umt5
    config = umt5_converted[0]
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "shared.weight"}
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    sd["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(31, 32)
    sd["encoder.extra.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(ConversionError) as info:
        EU.convert_umt5_state_dict(tmp_path / "bad.safetensors", config)
    msg = str(info.value)
    for key in ("encoder.block.1.layer.1.DenseReluDense.wo.weight",
                "encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.extra.weight",
                "(31, 32)"):
        assert key in msg, msg
    with pytest.raises(ConversionError, match="shared.weight"):   # wrong preset: shapes differ
        EU.convert_umt5_state_dict(hf_umt5[1], "tiny")
    # a plain torch state dict holds both tied embedding copies: the encoder's is used
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    _, params, report = EU.convert_umt5_state_dict(tmp_path / "pytorch_model.bin", config)
    assert report["skipped_keys"] == "shared.weight"
    np.testing.assert_array_equal(params["token_embedding"]["embedding"],
                                  model.state_dict()["encoder.embed_tokens.weight"].numpy())


# ----------------------------------------------------------------------------------------------
# CLIP vision
# ----------------------------------------------------------------------------------------------


def test_clip_parity_penultimate_layer(hf_clip, tmp_path):
    model, folder = hf_clip
    summary = EC.convert_clip_vision(folder, tmp_path / "clip", variant=None)
    config, params = L.load_clip_vision(tmp_path / "clip")
    assert (config.num_layers, config.output_layer, config.activation) == (3, 2, "gelu")
    assert summary["skipped"] == 16 + 2    # block 2 (16 tensors) + post_layernorm
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    out = C.encode_images(params, x.permute(0, 2, 3, 1).numpy(), config)
    assert out.shape == (2, 17, 32)
    err = rel_err(out, hidden[-2])
    assert err < RTOL, err
    assert rel_err(out, hidden[-1]) > 1e-2      # not the last block's output


def test_clip_quick_gelu_last_layer_with_projection(tmp_path_factory):
    model, folder = _hf_clip(tmp_path_factory, "quick_gelu", True, 2)
    config, params, report = EC.convert_clip_state_dict(
        folder, C.config_from_transformers(model.config, output_layer=-1))
    assert config.activation == "quick_gelu" and config.output_layer == 3
    assert "visual_projection.weight" in report["skipped_keys"]
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    out = C.CLIPVisionTower(config).apply({"params": params}, x.permute(0, 2, 3, 1).numpy())
    assert rel_err(out, hidden[-1]) < RTOL


def _clip_layouts(hf_sd: dict, layers: int) -> tuple[dict, dict]:
    """(Wan `XLMRobertaCLIP` state dict with MTVCrafter's `model.` prefix, open_clip state dict),
    both with text-tower keys, from a transformers CLIPVisionModel state dict."""
    v = "vision_model."
    hf_sd = {(k if k.startswith(v) else v + k): t for k, t in hf_sd.items()}
    e = v + "embeddings."
    wan = {"visual.patch_embedding.weight": hf_sd[e + "patch_embedding.weight"],
           "visual.cls_embedding": hf_sd[e + "class_embedding"].reshape(1, 1, -1),
           "visual.pos_embedding": hf_sd[e + "position_embedding.weight"][None],
           "visual.pre_norm.weight": hf_sd[v + "pre_layrnorm.weight"],
           "visual.pre_norm.bias": hf_sd[v + "pre_layrnorm.bias"],
           "visual.post_norm.weight": hf_sd[v + "post_layernorm.weight"],
           "visual.post_norm.bias": hf_sd[v + "post_layernorm.bias"],
           "visual.head": torch.zeros(32, 16), "log_scale": torch.zeros(()),
           "textual.token_embedding.weight": torch.zeros(5, 4)}
    oc = {"visual.conv1.weight": wan["visual.patch_embedding.weight"],
          "visual.class_embedding": hf_sd[e + "class_embedding"],
          "visual.positional_embedding": hf_sd[e + "position_embedding.weight"],
          "visual.ln_pre.weight": wan["visual.pre_norm.weight"],
          "visual.ln_pre.bias": wan["visual.pre_norm.bias"],
          "visual.ln_post.weight": wan["visual.post_norm.weight"],
          "visual.ln_post.bias": wan["visual.post_norm.bias"], "visual.proj": torch.zeros(32, 16),
          "positional_embedding": torch.zeros(7, 4), "logit_scale": torch.zeros(()),
          "transformer.resblocks.0.ln_1.weight": torch.zeros(4)}
    for i in range(layers):
        h = f"{v}encoder.layers.{i}."
        w, o = f"visual.transformer.{i}.", f"visual.transformer.resblocks.{i}."
        qkv_w = torch.cat([hf_sd[h + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        qkv_b = torch.cat([hf_sd[h + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        for s in ("weight", "bias"):
            wan[w + f"norm1.{s}"] = oc[o + f"ln_1.{s}"] = hf_sd[h + f"layer_norm1.{s}"]
            wan[w + f"norm2.{s}"] = oc[o + f"ln_2.{s}"] = hf_sd[h + f"layer_norm2.{s}"]
            wan[w + f"attn.proj.{s}"] = oc[o + f"attn.out_proj.{s}"] = hf_sd[
                h + f"self_attn.out_proj.{s}"]
            wan[w + f"mlp.0.{s}"] = oc[o + f"mlp.c_fc.{s}"] = hf_sd[h + f"mlp.fc1.{s}"]
            wan[w + f"mlp.2.{s}"] = oc[o + f"mlp.c_proj.{s}"] = hf_sd[h + f"mlp.fc2.{s}"]
        wan[w + "attn.to_qkv.weight"] = oc[o + "attn.in_proj_weight"] = qkv_w
        wan[w + "attn.to_qkv.bias"] = oc[o + "attn.in_proj_bias"] = qkv_b
    return {"model." + k: t.contiguous() for k, t in wan.items()}, \
        {k: t.contiguous() for k, t in oc.items()}


def test_clip_wan_and_open_clip_layouts(hf_clip, tmp_path):
    from safetensors.torch import save_file
    model, folder = hf_clip
    config, params, _ = EC.convert_clip_state_dict(folder, None)
    wan, oc = _clip_layouts(model.state_dict(), 3)
    torch.save(wan, tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    save_file(oc, tmp_path / "open_clip.safetensors")
    ref = flat(params)
    for src, naming in (("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "wan"),
                        ("open_clip.safetensors", "open_clip")):
        _, converted, report = EC.convert_clip_state_dict(tmp_path / src, config)
        assert report["naming"] == naming
        got = flat(converted)
        assert got.keys() == ref.keys()
        for path in ref:
            np.testing.assert_array_equal(got[path], ref[path], err_msg=f"{naming} {path}")


def test_clip_conversion_errors_name_keys(hf_clip, tmp_path):
    model, folder = hf_clip
    config, _, _ = EC.convert_clip_state_dict(folder, None)
    wan, _ = _clip_layouts(model.state_dict(), 3)
    del wan["model.visual.transformer.1.mlp.2.bias"]
    wan["model.visual.transformer.0.attn.to_qkv.weight"] = torch.zeros(93, 32)
    wan["model.visual.unknown"] = torch.zeros(2)
    torch.save(wan, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as info:
        EC.convert_clip_state_dict(tmp_path / "bad.pth", config)
    msg = str(info.value)
    for key in ("visual.transformer.1.mlp.2.bias", "visual.unknown",
                "visual.transformer.0.attn.to_qkv.weight[q]"):
        assert key in msg, msg
    with pytest.raises(ConversionError, match="3 blocks.*num_layers=32"):
        EC.convert_clip_state_dict(folder, "clip-vit-h-14")


# ----------------------------------------------------------------------------------------------
# Image preprocessing
# ----------------------------------------------------------------------------------------------


def test_clip_preprocess_matches_pipeline_reference():
    import torch.nn.functional as F
    rng = np.random.default_rng(5)
    image = rng.uniform(-1, 1, (1, 96, 60, 3)).astype(np.float32)     # portrait bucket shape
    # hand check of the uint8 round trip: truncation, not rounding
    u = P.quantize_to_uint8(np.array([-1.0, 0.0, 0.999, 1.0, 1.5], np.float32))
    np.testing.assert_array_equal(u, [0, 127, 254, 255, 255])
    # float32 path against the pipeline's torch ops
    t = torch.from_numpy(P.uint8_to_signed(P.quantize_to_uint8(image))).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(224, 224), mode="bicubic", align_corners=False)
    t = t.mul(0.5).add(0.5)
    t = (t - torch.tensor(P.CLIP_MEAN)[:, None, None]) / torch.tensor(P.CLIP_STD)[:, None, None]
    ref = t.permute(0, 2, 3, 1).numpy()
    out = P.clip_preprocess(image, bfloat16=False)
    assert out.shape == (1, 224, 224, 3)
    assert np.abs(out - ref).max() < 2e-4
    # the released bf16 path stays within bfloat16 rounding of the float32 one
    out16 = P.clip_preprocess(image)
    assert np.abs(out16 - ref).max() < 0.05
    # uint8 input enters at step 1
    u8 = P.quantize_to_uint8(image)
    np.testing.assert_array_equal(P.clip_preprocess(u8, bfloat16=False), out)


def test_clip_processor_recipe_matches_transformers():
    try:   # transformers 5 (without torchvision); 4.x's CLIPImageProcessor is PIL-based
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    rng = np.random.default_rng(6)
    processor = Processor()
    for shape in ((300, 200, 3), (180, 260, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        out = P.clip_processor_preprocess(image)
        assert np.abs(out - ref).max() < 1e-5


# ----------------------------------------------------------------------------------------------
# Tokenizer + TextEncoder, prompt cache
# ----------------------------------------------------------------------------------------------


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    words = "the character is dancing woman on beach waves sunset a man runs".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>")


def test_text_encoder_matches_transformers_pipeline(hf_umt5, umt5_converted):
    model, _ = hf_umt5
    config, params, _, dst = umt5_converted
    config = T.umt5_config(config, text_len=12)
    tokenizer = _tiny_tokenizer()
    encoder = T.TextEncoder(params, config, tokenizer, checkpoint_id=checkpoint_id(dst),
                            batch_size=2)
    prompts = ["the woman is dancing on the beach", "a man runs", "sunset"]
    ids, mask = T.tokenize(tokenizer, prompts, 12)
    assert ids.shape == (3, 12) and list(mask.sum(1)) == [8, 4, 2]
    assert ids[1, 3] == 1 and ids[1, 4] == 0        # EOS appended, then padding
    out = encoder(prompts)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
    for i, emb in enumerate(out):
        assert emb.shape == (int(mask[i].sum()), 32)
        assert rel_err(emb, ref[i, :emb.shape[0]].numpy()) < RTOL
    assert encoder.calls == 3
    # from the converted checkpoint: weights read on first use, bf16 compute (another identity)
    lazy = L.text_encoder_from_checkpoint(dst, tokenizer, dtype="bfloat16", batch_size=1)
    assert callable(lazy._params) and lazy.encoder_id != encoder.encoder_id
    (emb16,) = lazy(prompts[1:2])
    assert emb16.shape == out[1].shape and rel_err(emb16, out[1]) < 0.05


class CountingEncoder:
    encoder_id = "fake-encoder"

    def __init__(self):
        self.seen = []

    def __call__(self, prompts):
        self.seen += list(prompts)
        return [np.random.default_rng(len(p)).standard_normal((len(p.split()) + 1, 8))
                .astype(np.float32) for p in prompts]


def _manifest(keys):
    return {"index": {"train": [{"key": k, "source_id": f"src/{k}", "video_path": None}
                                for k in keys[:-1]],
                      "val": [{"key": keys[-1], "source_id": f"src/{keys[-1]}",
                               "video_path": None}]}}


def test_prompt_cache_encodes_each_prompt_once(tmp_path):
    import ml_collections
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("\n".join(json.dumps(r) for r in (
        {"key": "a", "prompt": "a man runs"}, {"key": "src/b", "prompt": "a man runs"},
        {"key": "c", "prompt": "the woman is dancing"})) + "\n")
    config = TC.default_config()
    config.enabled = True
    config.prompts = str(prompts_file)
    config.shard_records = 2
    keys = ["a", "b", "c", "d", "e"]
    root = tmp_path / "ds"
    root.mkdir()
    manifest = _manifest(keys)
    encoder = CountingEncoder()
    section = TC.text_step(config, root, manifest, encoder)
    # 2 listed prompts + the default (clips d, e) + the negative prompt, each encoded once
    assert sorted(encoder.seen) == sorted({"a man runs", "the woman is dancing",
                                           TC.DEFAULT_PROMPT, TC.NEGATIVE_PROMPT})
    assert section["encoded"] == 4 and section["clips_with_default_prompt"] == 2
    (root / "manifest.json").write_text(json.dumps(manifest))
    text = TE.DatasetText(root)
    reference = dict(zip(encoder.seen, CountingEncoder()(encoder.seen)))
    for key, prompt in (("a", "a man runs"), ("b", "a man runs"), ("c", "the woman is dancing"),
                        ("e", TC.DEFAULT_PROMPT)):
        assert text.prompt(key) == prompt
        np.testing.assert_array_equal(text.for_record(key), reference[prompt])
    np.testing.assert_array_equal(text.negative(), reference[TC.NEGATIVE_PROMPT])
    batch, lens = text.batch(["a", "c"], text_len=16)
    assert batch.shape == (2, 16, 8) and list(lens) == [4, 5] and not batch[0, 4:].any()
    # a rebuild from the previous cache encodes nothing and writes the same bytes
    files = {p.name: p.read_bytes() for p in (root / TE.CACHE_DIR).iterdir()}
    root2 = tmp_path / "ds2"
    root2.mkdir()
    again = CountingEncoder()
    TC.text_step(config, root2, _manifest(keys), again, previous=root / TE.CACHE_DIR)
    assert again.seen == []
    assert {p.name: p.read_bytes() for p in (root2 / TE.CACHE_DIR).iterdir()} == files
    # a new prompt is the only one encoded; float16 storage round-trips within its precision
    config.default_prompt = "sunset"
    config.store_dtype = "float16"
    third = CountingEncoder()
    TC.text_step(config, root, _manifest(keys), third)
    assert third.seen == ["sunset"]
    cache = TE.TextCache(root / TE.CACHE_DIR)
    assert len(cache) == 4      # only what the dataset needs now (the old default is gone)
    np.testing.assert_allclose(cache.get(TE.prompt_key("a man runs", "fake-encoder")),
                               reference["a man runs"], rtol=1e-3, atol=1e-3)
    with pytest.raises(TE.TextCacheError, match="d, e"):
        TC.resolve_prompts(_manifest(keys)["index"]["train"] + _manifest(keys)["index"]["val"],
                           TC.load_prompts(prompts_file), "")
    assert isinstance(config, ml_collections.ConfigDict)
    # embeddings made elsewhere enter the same cache
    given = {"sunset": np.ones((2, 8), np.float32)}
    keys_, stats = TC.encode_prompts(["sunset"], tmp_path / "pre",
                                     TC.PrecomputedEncoder(given, "torch-umt5"))
    np.testing.assert_array_equal(TE.TextCache(tmp_path / "pre").get(keys_["sunset"]),
                                  given["sunset"])


# ----------------------------------------------------------------------------------------------
# Real presets
# ----------------------------------------------------------------------------------------------


def test_real_preset_parameter_counts():
    assert T.count_params(T.param_shapes("umt5-xxl")) == 5_680_910_336
    assert C.count_params(C.param_shapes("clip-vit-h-14")) == 611_086_080
    full = C.clip_vision_config("clip-vit-h-14", output_layer=32)
    assert C.count_params(C.param_shapes(full)) == 630_763_520
    shapes = jax.tree.map(lambda s: s.shape, T.param_shapes("umt5-xxl"))
    assert shapes["layers"]["attn"]["relative_attention_bias"] == (24, 32, 64)
    assert shapes["token_embedding"]["embedding"] == (256384, 4096)
