"""Building a 4DMoT from its config: the module, the quantizer settings and its variables.

Training, conversion and inference all start here, so a checkpoint's config JSON alone rebuilds
the model whatever uses it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mtvjax.errors import ConfigError
from mtvjax.models.fourdmot import quantizer as vq
from mtvjax.models.fourdmot.model import FourDMoT


def build_model(model_config) -> FourDMoT:
    """The module of a config's `model` section (lists become tuples)."""
    return FourDMoT(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                       for k, v in model_config.items()})


def quantizer_settings(config) -> vq.QuantizerSettings:
    """The EMA / dead-code settings of a config's `quantizer` section."""
    q = config.quantizer
    if q.reset_rule not in vq.RESET_RULES:
        raise ConfigError(f"config.quantizer.reset_rule={q.reset_rule!r}: use one of "
                          + ", ".join(vq.RESET_RULES))
    return vq.QuantizerSettings(decay=q.decay, dead_threshold=q.dead_threshold,
                                reset_every=q.reset_every, init_noise=q.init_noise,
                                reset_rule=q.reset_rule)


def init_variables(model: FourDMoT, rng: jax.Array) -> tuple[dict, dict]:
    """Fresh (params, quantizer state); pure in `rng`, so `jax.eval_shape` gives their shapes."""
    dummy = jnp.zeros((1, model.window_frames, 24, model.coord_dim), jnp.float32)
    variables = model.init(rng, dummy)
    return variables["params"], variables[vq.COLLECTION]["codebook"]


def abstract_variables(model: FourDMoT) -> tuple[dict, dict]:
    """Shapes and dtypes of `init_variables`, without allocating anything."""
    return jax.eval_shape(lambda rng: init_variables(model, rng), jax.random.PRNGKey(0))
