"""MV-DiT training on real-video records: the optional posterior log-variance (`latents_logvar`)
through records, batches and the train step; the 17B's F-frame reference latents as `y`; and a
17B refuses data without CLIP-image features."""
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from conftest import load_config
from mtvjax.data.latent_batches import LatentBatchBuilder
from mtvjax.data.latent_records import (LatentRecordError, decode_latent_record,
                                        encode_latent_record)
from mtvjax.data.synthetic_latents import SyntheticLatentSource
from mtvjax.models.mvdit import registry
from mtvjax.train import mvdit_step as steps
from mtvjax.train import mvdit_trainer as T


def _item(index=0):
    return SyntheticLatentSource(4, 9, (4, 4))[index]


def _record(item, **extra):
    return encode_latent_record(key=item["key"], source_id=item["source_id"],
                                latents=item["latents"], ref_latents=item["ref_latents"],
                                motion=item["motion"], **extra)


def test_logvar_round_trips_and_is_checked():
    item = _item()
    logvar = np.random.default_rng(0).normal(size=item["latents"].shape).astype(np.float32) - 4
    back = decode_latent_record(_record(item, latents_logvar=logvar))
    np.testing.assert_array_equal(back["latents_logvar"], logvar)
    half = decode_latent_record(_record(item, latents_logvar=logvar, latent_dtype="<f2"))
    np.testing.assert_allclose(half["latents_logvar"], logvar, atol=4e-3)
    assert decode_latent_record(_record(item))["latents_logvar"] is None
    raw = msgpack.unpackb(_record(item, latents_logvar=logvar), raw=False)
    del raw["latents_logvar"]                    # a record written before the field existed
    assert decode_latent_record(msgpack.packb(raw, use_bin_type=True))["latents_logvar"] is None
    with pytest.raises(LatentRecordError, match="latents_logvar must be"):
        _record(item, latents_logvar=logvar[:2])


def test_batches_stack_logvar_and_refuse_a_mix():
    items = [decode_latent_record(_record(_item(i), latents_logvar=np.full(
        _item(i)["latents"].shape, -float(i), np.float32))) for i in range(3)]
    batch = LatentBatchBuilder(items)(np.arange(2))
    assert batch["latents_logvar"].shape == (2, 3, 4, 4, 16)
    np.testing.assert_array_equal(batch["latents_logvar"][1], -1.0)
    assert "latents_logvar" not in LatentBatchBuilder([_item(0), _item(1)])(np.arange(2))
    plain = decode_latent_record(_record(_item(3)))
    with pytest.raises(ValueError, match=f"without latents_logvar.*{plain['key']}"):
        LatentBatchBuilder(items[:1] + [plain])(np.arange(2))


def _tiny7b():
    config = load_config("mvdit.py", "tiny")
    config.model.num_layers = 1
    config.model.uncond_motion_shape = None
    config.data.synthetic_windows = 4
    config.data.synthetic_latent_size = (4, 4)
    config.train.motion_drop_prob = 0.0
    return config


def test_step_draws_x0_from_the_posterior():
    """Eval-step loss (fixed key): logvar −60 (σ ≈ 1e-13) equals the no-logvar loss, logvar 0
    moves it; the posterior noise, like the rest, is a per-sample function of the key."""
    config = _tiny7b()
    source = T.make_source(config)
    local = LatentBatchBuilder(source)(np.arange(4))
    model = steps.build_model(config)
    params = steps.init_variables(config, model, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                          is_leaf=lambda x: hasattr(x, "value"))
    loss = jax.jit(steps.make_eval_step(config, model))
    batch = {k: jnp.asarray(v)[None] for k, v in local.items()
             if k in ("latents", "ref_latents", "motion_tokens")}
    batch["sample_index"] = jnp.arange(4, dtype=jnp.int32)[None]
    key = jax.random.PRNGKey(3)
    base = float(loss(params, batch, key))
    lat = batch["latents"]
    tight = float(loss(params, dict(batch, latents_logvar=jnp.full_like(lat, -60.0)), key))
    wide = float(loss(params, dict(batch, latents_logvar=jnp.zeros_like(lat)), key))
    np.testing.assert_allclose(tight, base, rtol=1e-6)
    assert abs(wide - base) > 1e-3 * abs(base)

    draw = jax.jit(steps.make_draw(steps.make_schedule(config)), static_argnums=(3, 4))
    x0, logvar = jnp.zeros((8, 2, 2, 2, 3)), jnp.zeros((8, 2, 2, 2, 3))
    whole = draw(key, jnp.arange(8), x0, 0.0, 0.0, logvar)[0]
    part = draw(key, jnp.arange(4, 8), x0[4:], 0.0, 0.0, logvar[4:])[0]
    np.testing.assert_allclose(part, whole[4:], rtol=1e-6, atol=1e-6)
    plain = draw(key, jnp.arange(8), x0, 0.0, 0.0)[0]
    assert float(jnp.max(jnp.abs(whole - plain))) > 0.1     # the posterior noise is there


class _Capture:
    """A stand-in model whose `apply` records its inputs (no 17B compile needed)."""

    def apply(self, variables, x, timesteps, text, image, tokens, **kw):
        self.image, self.kw = image, kw
        return jnp.zeros_like(x)


def _predict_17b(micro, frames=3):
    config = load_config("mvdit.py", "tiny17b")
    x_t = jnp.zeros((2, frames, 4, 4, 16))
    model = _Capture()
    registry.of(config).predict(model, {}, x_t, jnp.zeros((2,)), micro, None, None,
                                jnp.zeros((2,), bool), {}, config)
    return model


def test_17b_uses_f_frame_reference_latents_as_y():
    rng = np.random.default_rng(0)
    ref = jnp.asarray(rng.normal(size=(2, 3, 4, 4, 16)), jnp.float32)
    image = jnp.ones((2, 4, 1280))
    got = _predict_17b({"ref_latents": ref, "image": image})
    np.testing.assert_array_equal(got.kw["ref"], ref)
    np.testing.assert_array_equal(got.kw["mask"][:, 0], 1.0)
    np.testing.assert_array_equal(got.kw["mask"][:, 1:], 0.0)
    assert got.image is image
    single = _predict_17b({"ref_latents": ref[:, :1], "image": image})   # synthetic stand-in
    np.testing.assert_array_equal(single.kw["ref"][:, 0], ref[:, 0])
    np.testing.assert_array_equal(single.kw["ref"][:, 1:], 0.0)
    np.testing.assert_array_equal(single.kw["mask"], got.kw["mask"])
    with pytest.raises(ValueError, match="`image`"):
        _predict_17b({"ref_latents": ref})


def test_17b_refuses_data_without_image(tmp_path):
    config = load_config("mvdit.py", "tiny17b")
    config.data.synthetic_windows = 4
    item = T.make_source(config)[0]
    assert item["image"].shape == (4, config.model.image_dim)     # synthetic stand-in features
    T.check_image(config, item, "synthetic")
    record = decode_latent_record(_record(_item()))
    with pytest.raises(ValueError, match="/data/x: the records have no `image`"):
        T.check_image(config, record, "/data/x")
    T.check_image(load_config("mvdit.py", "tiny"), record, "/data/x")   # the 7B has no branch
    config.data.synthetic_image_rows = 0
    with pytest.raises(ValueError, match="data.source=synthetic: .*`image`"):
        T.train(config, str(tmp_path / "run"))
