"""Conversion of released 4DMoT weights: parity with an independent PyTorch model, file formats,
error messages, the `mtvjax convert` command and the full-size layout."""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import torch_reference_4dmot as ref
from mtvjax.models.fourdmot import convert as conv
from mtvjax.checkpoint.manager import Checkpointer, abstract_like, read_config
from mtvjax.data.motion_files import load_clips
from mtvjax.models.fourdmot import forward as fwd
from mtvjax.models.fourdmot.build import build_model
from mtvjax.models.fourdmot.model import FourDMoT, latent_frames
from mtvjax.train import fourdmot_step as steps
from mtvjax.train.fourdmot_released import convert_4dmot

# Reduced width; dilation reference 128 gives dilation 3 at width 32 and 1 at 64, as in the release.
SMALL = dict(channels=(32, 64), code_dim=64, codebook_size=128, num_res_blocks=2, num_groups=8,
             dilation_reference=128)
TINY = dict(channels=(32, 64), code_dim=64, codebook_size=256, num_res_blocks=1, num_groups=8,
            dilation_reference=128)   # = configs/4dmot.py:tiny


def small_config():
    config = conv.load_variant("tiny")
    config.model.update(SMALL)
    return config


def random_reference(sizes, seed=0, calibrate=None):
    """Random torch model; GroupNorm affine away from 1/0; codebook half from encoder outputs."""
    torch.manual_seed(seed)
    model = ref.Reference4DMoT(**sizes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
        k, d = model.vq.codebook.shape
        codebook = torch.randn(k, d)
        if calibrate is not None:
            z = model.encode(calibrate).permute(0, 2, 3, 1).reshape(-1, d)
            codebook = codebook * z.std() + z.mean()
            picks = z[torch.randperm(z.shape[0])[: k // 2]]
            codebook[: len(picks)] = picks + 0.3 * z.std() * torch.randn_like(picks)
        model.vq.codebook.copy_(codebook)
    return model


def state_dict_numpy(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sample(mtvcrafter_sample):
    clips, _ = load_clips(mtvcrafter_sample / "sampled_data.pkl", min_frames=64)
    mean, std = mtvcrafter_sample / "mean.npy", mtvcrafter_sample / "std.npy"
    return {"clips": [c.motion for c in clips], "mean": str(mean), "std": str(std),
            "stats": {"mean": np.load(mean), "std": np.load(std)}}


def batch(sample, frames, count, offset=0):
    clips = sample["clips"][:count]
    return np.stack([m[offset: offset + frames] for m in clips]).astype(np.float32)


def normalised(sample, motion):
    return torch.from_numpy((motion - sample["stats"]["mean"]) / sample["stats"]["std"])


@pytest.fixture(scope="module")
def converted(sample, tmp_path_factory):
    """The small reference saved DeepSpeed-style, converted, restored in init_state's shape."""
    calib = normalised(sample, batch(sample, 49, 3, offset=60))
    model = random_reference(SMALL, seed=3, calibrate=calib)
    folder = tmp_path_factory.mktemp("convert")
    src = folder / "mp_rank_00_model_states.pt"
    torch.save({"module": model.state_dict(), "ds_version": "0.0", "global_steps": 7}, src)
    summary = convert_4dmot(src, folder / "ckpt", sample["mean"], sample["std"],
                            variant=small_config())
    return model, restore(folder / "ckpt"), summary, folder


def restore(directory):
    """Rebuilds model and state from the checkpoint folder alone (its config JSON)."""
    config, step = read_config(str(directory))
    config = ml_collections.ConfigDict(config)
    model, tx = build_model(config.model), steps.make_optimizer(config)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_like(steps.abstract_state(config, model, tx), sharding)
    checkpointer = Checkpointer(str(directory), create=False)
    state = checkpointer.restore(step, abstract)
    checkpointer.close()
    return model, state


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def nearest_gap(z, codebook):
    """Smallest relative gap between the nearest and second-nearest code (float64)."""
    z, codebook = z.double(), codebook.double()
    dist = (z ** 2).sum(1, keepdim=True) - 2 * z @ codebook.T + (codebook ** 2).sum(1)[None]
    top = dist.topk(2, largest=False).values
    return float(((top[:, 1] - top[:, 0]) / top[:, 0]).min())


@pytest.mark.parametrize("frames,count", [(49, 3), (64, 2)])
def test_parity_with_torch_reference(converted, sample, frames, count):
    torch_model, (model, state), _, _ = converted
    motion = batch(sample, frames, count)
    with torch.no_grad():
        t_recon, t_idx, t_z = torch_model(normalised(sample, motion))
        t_q, _ = torch_model.quantize(t_z)
    gap = nearest_gap(t_z.permute(0, 2, 3, 1).reshape(-1, t_z.shape[1]), torch_model.vq.codebook)
    assert gap > 1e-5, "a near-tie between codes: token parity would be ill-posed for this seed"
    forward = jax.jit(functools.partial(fwd.forward, model, sw=fwd.Switches(differential=False)))
    decode = jax.jit(lambda p, q: model.apply({"params": p}, q, method=FourDMoT.decode))
    with jax.default_matmul_precision("highest"):
        out = forward(state.params, state.quantizer["codebook"], motion, state.stats)
        recon_same_codes = decode(state.params, t_q.permute(0, 2, 3, 1).numpy())
    z_err = rel_err(out["z"], t_z.permute(0, 2, 3, 1).numpy())
    recon_err = rel_err(out["recon"], t_recon.numpy())
    decode_err = rel_err(recon_same_codes, t_recon.numpy())
    agree = float(np.mean(np.asarray(out["indices"]) == t_idx.numpy()))
    print(f"\n{frames} frames x {count}: z rel err {z_err:.2e}, recon rel err {recon_err:.2e} "
          f"(decoder alone {decode_err:.2e}), token agreement {agree:.4f} of {t_idx.numel()} "
          f"({len(np.unique(t_idx.numpy()))} distinct, min nearest-code gap {gap:.1e})")
    assert out["indices"].shape == (count, latent_frames(frames, 8), 24)
    assert out["recon"].shape == motion.shape
    assert len(np.unique(t_idx.numpy())) > 10       # the tokens are not degenerate
    np.testing.assert_array_equal(np.asarray(out["indices"]), t_idx.numpy())
    assert z_err < 1e-4 and decode_err < 1e-4 and recon_err < 1e-4


def test_checkpoint_contents(converted, sample):
    torch_model, (_, state), summary, _ = converted
    sd = torch_model.state_dict()
    np.testing.assert_array_equal(state.quantizer["codebook"], sd["vq.codebook"].numpy())
    np.testing.assert_array_equal(state.quantizer["ema_sum"], sd["vq.codebook"].numpy())
    np.testing.assert_array_equal(state.quantizer["ema_count"], np.ones(SMALL["codebook_size"]))
    assert bool(state.quantizer["initialized"]) and int(state.step) == 0
    np.testing.assert_array_equal(state.stats["mean"], sample["stats"]["mean"])
    np.testing.assert_array_equal(state.stats["std"], sample["stats"]["std"])
    kernel = state.params["encoder"]["stage0_down"]["conv"]["kernel"]
    np.testing.assert_array_equal(
        kernel, sd["encoder.downsample1.joint_downsample.weight"].numpy().transpose(2, 1, 0)[None])
    assert summary["tensors"] == len(sd) and summary["model"]["channels"] == (32, 64)


def test_bare_state_dict_and_safetensors(converted, sample):
    torch_model, (_, state), _, folder = converted
    sd = torch_model.state_dict()
    torch.save(sd, folder / "bare.pt")
    save_file(state_dict_numpy(torch_model), str(folder / "model.safetensors"))
    for name in ("bare.pt", "model.safetensors"):
        convert_4dmot(folder / name, folder / f"ckpt_{name}", sample["mean"], sample["std"],
                      variant=small_config())
        _, other = restore(folder / f"ckpt_{name}")
        for a, b in zip(jax.tree.leaves((state.params, state.quantizer)),
                        jax.tree.leaves((other.params, other.quantizer))):
            np.testing.assert_array_equal(a, b)
    # No variant: sizes read from the file on top of `released` (groups/dilation stay released's).
    summary = convert_4dmot(folder / "model.safetensors", folder / "ckpt_inferred",
                            sample["mean"], sample["std"], variant=None)
    assert {k: summary["model"][k] for k in conv.INFERRED_FIELDS} == {
        "channels": (32, 64), "num_res_blocks": 2, "code_dim": 64, "codebook_size": 128,
        "joint_kernel": 3}
    assert summary["variant"] == "released" and summary["model"]["num_groups"] == 32


def test_errors_name_the_offending_keys(converted, sample, tmp_path):
    torch_model = converted[0]
    convert = functools.partial(convert_4dmot, mean_path=sample["mean"],
                                std_path=sample["std"], variant=small_config())

    def attempt(sd, name, **kwargs):
        path = tmp_path / f"{name}.pt"
        torch.save({"module": sd}, path)
        with pytest.raises(conv.ConversionError) as err:
            convert(path, tmp_path / f"out_{name}", **kwargs)
        assert str(err.value).startswith(str(path))
        return str(err.value)

    sd = dict(torch_model.state_dict())
    msg = attempt({**sd, "encoder.extra.weight": torch.zeros(3)}, "extra")
    assert "unused source keys: encoder.extra.weight" in msg
    missing = {k: v for k, v in sd.items() if k != "decoder.resnet3.1.block.2.weight"}
    assert "missing keys: decoder.resnet3.1.block.2.weight" in attempt(missing, "missing")
    wrong = {**sd, "decoder.resnet1.0.block.3.bias": torch.zeros(65)}
    assert "decoder.resnet1.0.block.3.bias: shape (65,) in file, expected (64,)" in \
        attempt(wrong, "shape")
    conv_wrong = {**sd, "decoder.conv_out.weight": torch.zeros(3, 32, 1, 3)}
    assert "decoder.conv_out.weight: shape (3, 32, 1, 3) in file, expected (3, 32, 3, 3)" in \
        attempt(conv_wrong, "conv")
    msg = attempt(sd, "variant", variant="released")
    assert "variant 'released'" in msg and "channels: file (32, 64), config (128, 512)" in msg
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(conv.ConversionError, match="junk.pt: cannot be read by torch.load"):
        convert(tmp_path / "junk.pt", tmp_path / "out_junk")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        convert(tmp_path / "junk.pt", tmp_path)


def test_cli_convert(sample, tmp_path):
    model = random_reference(TINY, seed=1)
    torch.save({"module": model.state_dict()}, tmp_path / "tiny.pt")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "mtvjax.cli", "convert", "4dmot", f"--src={tmp_path / 'tiny.pt'}",
           f"--dst={tmp_path / 'ckpt'}", f"--mean={sample['mean']}", f"--std={sample['std']}",
           "--variant=tiny"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    config, step = read_config(str(tmp_path / "ckpt"))
    assert step == 0 and config["normalization"]["differential"] is False
    assert config["normalization"]["mean_path"] == os.path.abspath(sample["mean"])
    assert config["normalization"]["std_path"] == os.path.abspath(sample["std"])
    assert config["model"]["codebook_size"] == 256
    bad = subprocess.run(cmd[:4] + ["mystery"] + cmd[5:], env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "expected one model name out of 4dmot" in bad.stderr and "got mystery" in bad.stderr


def test_full_size_layout_and_parameter_count():
    with torch.device("meta"):
        model = ref.Reference4DMoT()         # paper / released sizes
    assert sum(p.numel() for p in model.parameters()) == 48_323_075
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 133 and shapes["vq.codebook"] == (8192, 3072)
    config = conv.load_variant("released")
    assert conv.infer_model_config(shapes) == {k: tuple(v) if isinstance(v, list) else v
                                               for k, v in config.model.items()
                                               if k in conv.INFERRED_FIELDS}
    flax_model, tx = build_model(config.model), steps.make_optimizer(config)
    abstract = steps.abstract_state(config, flax_model, tx)
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params)) == 48_323_075
    conv.check_layout(shapes, conv.target_shapes(abstract), conv.name_table(config.model), "meta")
