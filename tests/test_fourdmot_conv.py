"""`WindowConv` is `nn.Conv` with 'same' zero padding: parameters, outputs and gradients."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mtvjax.models.fourdmot.model import FourDMoT
from mtvjax.models.fourdmot.window_conv import WindowConv


def reference_conv(features, kernel_size, dilation):
    padding = tuple((dilation * (k // 2),) * 2 for k in kernel_size)
    return nn.Conv(features, kernel_size, padding=padding, kernel_dilation=(dilation, dilation))


@jax.jit(static_argnums=0)
def output_and_gradients(module, params, x):
    """The output and the gradients (params, input) of `sum(sin(output))`."""
    y, vjp = jax.vjp(module.apply, params, x)
    return y, vjp(jnp.cos(y))


def assert_same_as_nn_conv(frames, kernel_size, dilation, c_in, c_out):
    x = jax.random.normal(jax.random.PRNGKey(frames), (2, frames, 24, c_in))
    reference = reference_conv(c_out, kernel_size, dilation)
    expected_params = reference.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda p: p + 0.1, expected_params)  # a non-zero bias
    expected = output_and_gradients(reference, params, x)
    for impl in ("matmul", "lax"):
        conv = WindowConv(c_out, kernel_size, dilation, impl)
        # Same names, shapes and initial values as nn.Conv: checkpoints stay interchangeable.
        chex.assert_trees_all_equal(conv.init(jax.random.PRNGKey(0), x), expected_params)
        assert_close_to_magnitude(output_and_gradients(conv, params, x), expected)


def assert_close_to_magnitude(actual, expected, tolerance=1e-5):
    """Leafwise, within `tolerance` of max(1, the leaf's largest |value|): the kernel gradient sums
    2·frames·24 products, so its rounding grows with its magnitude and with the instruction set's
    summation order (1.15e-5 absolute seen on AVX-512); a wrong tap is off by order 1."""
    chex.assert_trees_all_equal_structs(actual, expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        scale = max(1.0, float(jnp.abs(e).max()))
        chex.assert_trees_all_close(a, e, atol=tolerance * scale, rtol=tolerance)


@pytest.mark.parametrize("frames", (2, 4, 9))  # at dilation 3 a 2-frame window has no outer taps
@pytest.mark.parametrize("dilation", (1, 3))
@pytest.mark.parametrize("c_in,c_out", ((4, 6), (6, 4)))  # joint taps gathered on either side
def test_3x3_conv_equals_nn_conv(frames, dilation, c_in, c_out):
    assert_same_as_nn_conv(frames, (3, 3), dilation, c_in, c_out)


@pytest.mark.parametrize("kernel_size", ((1, 3), (1, 1)))
@pytest.mark.parametrize("c_in,c_out", ((4, 6), (6, 4)))
def test_joint_and_pointwise_convs_equal_nn_conv(kernel_size, c_in, c_out):
    assert_same_as_nn_conv(3, kernel_size, 1, c_in, c_out)


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        WindowConv(4, impl="fft").init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 24, 4)))


def test_whole_tokenizer_is_the_same_with_either_impl():
    """Encode and decode a 13-frame clip (a 5-frame first window, one 8-frame window)."""
    common = dict(channels=(8, 16), num_res_blocks=1, code_dim=12, codebook_size=16,
                  num_groups=4, dilation_reference=32)
    motion = jax.random.normal(jax.random.PRNGKey(3), (2, 13, 24, 3))
    fast, reference = FourDMoT(**common), FourDMoT(**common, conv_impl="lax")
    params = fast.init(jax.random.PRNGKey(0), motion)

    def encode_decode(model):
        z = model.apply(params, motion, method=FourDMoT.encode)
        return z, model.apply(params, z, method=FourDMoT.decode)

    # Every convolution of the encoder follows the switch (its only products are convolutions).
    encoders = [str(jax.make_jaxpr(lambda x: m.apply(params, x, method=FourDMoT.encode))(motion))
                for m in (fast, reference)]
    assert "conv_general_dilated" not in encoders[0] and "dot_general" in encoders[0]
    assert "dot_general" not in encoders[1] and "conv_general_dilated" in encoders[1]
    chex.assert_trees_all_close(jax.jit(encode_decode, static_argnums=0)(fast),
                                jax.jit(encode_decode, static_argnums=0)(reference),
                                atol=1e-5, rtol=1e-5)
