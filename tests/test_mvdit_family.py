"""The MV-DiT family contract: both families expose the same names, their sampling recipes build
the released samplers and guidance, and the configs take their per-family defaults from it."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import load_config
from mtvjax.diffusion import samplers
from mtvjax.models.mvdit import registry
from mtvjax.sample import guidance as G
from mtvjax.sample.animator_common import GUIDANCE, motion_args, recipe_sampling

class Sampling(dict):
    __getattr__ = dict.__getitem__


@pytest.mark.parametrize("name", registry.FAMILIES)
def test_family_exposes_the_contract(name):
    fam = registry.family(name)
    missing = [n for n in registry.CONTRACT if not hasattr(fam, n)]
    assert not missing, f"{name} lacks {missing}"
    assert fam.NAME == name
    assert fam.TRAINING_SCHEDULE["kind"] == fam.TRAINING_TARGET
    recipe = fam.SAMPLER
    assert recipe.guidance in GUIDANCE
    for _, factory in recipe.samplers:
        assert callable(getattr(samplers, factory))


def test_recipes_build_the_released_samplers_and_guidance():
    s7 = Sampling(sampler="dpm", steps=4, motion_cfg=3.0, text_cfg=1.0)
    sampler, guidance = recipe_sampling("cogvideox", s7)
    ref = samplers.cogvideox_dpm(4)
    assert type(sampler) is type(ref) and sampler.num_steps == 4
    np.testing.assert_allclose(sampler.mult1, ref.mult1, rtol=1e-6)
    assert guidance == G.motion_cfg_7b(3.0)

    s17 = Sampling(sampler="unipc", steps=3, motion_cfg=1.0, text_cfg=6.0)
    sampler, guidance = recipe_sampling("wan", s17)
    assert isinstance(sampler, samplers.FlowUniPCSampler) and sampler.num_steps == 3
    assert guidance == G.text_cfg_17b(6.0)
    _, guidance = recipe_sampling("wan", Sampling(s17, motion_cfg=2.0))
    assert guidance == G.text_motion_cfg_17b(6.0, 2.0)

    with pytest.raises(ValueError, match="sampling.sampler 'euler'.*'ddim', 'dpm'"):
        recipe_sampling("cogvideox", Sampling(s7, sampler="euler"))


def test_motion_args():
    assert motion_args() == ()
    joints = np.zeros((1, 24, 3), np.float32)
    assert motion_args(joints) == (joints,)
    none_joints, mm = motion_args(None, np.ones((1, 5, 24, 3)))
    assert none_joints is None and mm.dtype == np.float32 and mm.shape == (1, 5, 24, 3)


def test_configs_take_the_family_defaults():
    for variant in ("tiny", "tiny17b"):
        c = load_config("mvdit.py", variant)
        fam = registry.of(c)
        assert c.schedule.to_dict() == fam.TRAINING_SCHEDULE
        assert c.optim.trainable == fam.DEFAULT_TRAINABLE
        assert c.data.synthetic_text_rows == (4 if fam.HAS_TEXT else 0)
    with pytest.raises(ValueError, match="unknown mvdit variant 'huge'"):
        load_config("mvdit.py", "huge")
    for variant in ("7b", "17b"):
        c = load_config("animate.py", variant)
        recipe = registry.family(c.family).SAMPLER
        assert (c.sampling.sampler, c.sampling.steps) == (recipe.default_sampler, recipe.steps)
        assert (c.sampling.motion_cfg, c.sampling.text_cfg) == (recipe.motion_cfg,
                                                                recipe.text_cfg)


@pytest.mark.parametrize("variant", ["tiny", "tiny17b"])
def test_logical_axes_cover_the_abstract_params(variant):
    config = load_config("mvdit.py", variant)
    fam = registry.of(config)
    params = traverse_util.flatten_dict(fam.abstract_params(config))
    axes = traverse_util.flatten_dict(fam.logical_axes(config))
    assert set(axes) == set(params)
    for path, spec in axes.items():
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == len(params[path].shape), path
