"""Building blocks shared by the MV-DiT families: linear layers with logical axis names, the
sinusoidal timestep embedding, AdaLN modulation, the GELU feed-forward, and an attention module
with per-projection logical axes, optional norms on q, k and v (`layers.norms.LayerNorm` with
logical axes) and an optional key mask.

Every parameter is created through `nn.with_logical_partitioning`, so `model.init` returns boxed
`nn.LogicallyPartitioned` leaves whose logical names a sharding step maps to mesh axes with
`config.sharding_rules`; `nn.meta.unbox(variables)` gives plain arrays, and `apply` accepts either.
Logical names used here:

  embed         model width D
  mlp           feed-forward hidden width (4·D)
  heads         joined attention width heads·head_dim (head-major, so sharding it splits heads)
  kv            head_dim (the per-head QK/V norm parameters)
  modulation    AdaLN modulation rows (k·D)
  time_embed    timestep-embedding width E
  patch         patch vector C·p·p (patch embed in, `proj_out` out)
  text_embed    text-embedding width (the unused CogVideoX `text_proj`)
  motion_tokens rows of a learned motion-token sequence
  layers        the scanned layer axis (added by `nn.scan(metadata_params=...)`)

Activations: `shard_video` pins the residual stream `[B, T, D]` to ("batch", "sequence", None)
and `shard_video_rope` a per-token RoPE table to ("sequence", None), so under a `context` mesh
axis every device keeps its block of video tokens (`mtvjax.parallel.context_attention`); outside
`mtvjax.parallel.sharding.activation_sharding` both return their input.

Numerics follow torch: norms in float32 cast back to the compute dtype; linear layers run in the
compute dtype with float32 parameters cast down (as the bf16 reference model does).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtvjax.models.layers.activations import gelu_tanh
from mtvjax.models.layers.attention import AttentionKernel, dot_product_attention, split_heads
from mtvjax.models.layers.norms import LayerNorm
from mtvjax.models.layers.rope import INTERLEAVED, RopeTable, apply_rope
from mtvjax.parallel.context_attention import SEQUENCE
from mtvjax.parallel.sharding import constrain

Axes = Sequence[str | None]


def shard_video(x):
    """The residual stream `[B, T, D]` of the video tokens, sharded over batch and sequence."""
    return constrain(x, ("batch", SEQUENCE, None))


def shard_video_rope(table: RopeTable | None) -> RopeTable | None:
    """A RoPE table of the video tokens `[T, d/2]`, sharded like their sequence (None: None)."""
    if table is None:
        return None
    return RopeTable(*(constrain(a, (SEQUENCE, None)) for a in table))


def logical(init: Callable, axes: Axes) -> Callable:
    return nn.with_logical_partitioning(init, tuple(axes))


def torch_linear_init(fan_in_axis: int = 0) -> Callable:
    """torch.nn.Linear's default U(−1/√fan_in, 1/√fan_in) (kaiming-uniform with a = √5)."""
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(shape[fan_in_axis])
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def output_init(zero: bool) -> Callable:
    """Kernel initialiser of an output projection: zeros (the layer starts as a no-op on the
    residual stream) or the default LeCun normal."""
    return nn.initializers.zeros if zero else nn.initializers.lecun_normal()


def resolve_precision(precision):
    """None / "default" / "high" / "highest" (or a `jax.lax.Precision`) → a matmul precision."""
    if precision is None or isinstance(precision, jax.lax.Precision):
        return precision
    names = {"default": None, "high": jax.lax.Precision.HIGH,
             "highest": jax.lax.Precision.HIGHEST}
    if precision not in names:
        raise ValueError(f"unknown matmul precision {precision!r}; expected one of {sorted(names)}")
    return names[precision]


class ComputeModule(nn.Module, kw_only=True):
    """Base of the MV-DiT modules built from `Linear`s: keyword-only compute `dtype` (None: the
    input's), `param_dtype` and matmul `precision`, handed on to submodules as `**self.kw`."""

    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @property
    def kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)


class Linear(ComputeModule):
    """y = x·W + b with W `[in, out]` (the transpose of torch's `[out, in]` weight)."""

    features: int
    kernel_axes: Axes = ("embed", "mlp")
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", logical(self.kernel_init, self.kernel_axes),
                            (x.shape[-1], self.features), self.param_dtype)
        dtype = self.dtype or x.dtype
        y = jnp.einsum("...i,io->...o", x.astype(dtype), kernel.astype(dtype),
                       precision=resolve_precision(self.precision))
        if self.use_bias:
            bias = self.param("bias", logical(self.bias_init, self.kernel_axes[-1:]),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


def timestep_sinusoid(timesteps, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                      max_period: float = 10000.0) -> jax.Array:
    """diffusers `get_timestep_embedding`: `[B]` → `[B, dim]` float32 (7B §3.1).

    f_k = exp(−ln(max_period)·k / (half − freq_shift)), a_k = t·f_k, all in float32;
    [sin | cos], or [cos | sin] with `flip_sin_to_cos`; an odd `dim` gets a zero last column.
    """
    half = dim // 2
    exponent = jnp.float32(-math.log(max_period)) * jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(exponent / jnp.float32(half - freq_shift))
    angles = jnp.asarray(timesteps).astype(jnp.float32)[:, None] * freqs[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(ComputeModule):
    """`linear_2(SiLU(linear_1(t_emb)))`, no activation after linear_2 (7B §3.1)."""

    features: int

    @nn.compact
    def __call__(self, x):
        x = Linear(self.features, ("embed", "time_embed"), name="linear_1", **self.kw)(x)
        return Linear(self.features, ("time_embed", "time_embed"), name="linear_2",
                      **self.kw)(nn.silu(x))


class ModulationLinear(ComputeModule):
    """The modulation Linear `[E, num_chunks·D]` of which only the first `used` rows are computed
    (CogVideoX's LayerNormZero has dead text-stream rows, 7B §3.3.1)."""

    features: int
    used: int

    @nn.compact
    def __call__(self, emb_act):
        axes = ("time_embed", "modulation")
        kernel = self.param("kernel", logical(nn.initializers.lecun_normal(), axes),
                            (emb_act.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", logical(nn.initializers.zeros, axes[1:]), (self.features,),
                          self.param_dtype)
        dtype = self.dtype or emb_act.dtype
        m = jnp.einsum("bi,io->bo", emb_act.astype(dtype), kernel[:, :self.used].astype(dtype),
                       precision=resolve_precision(self.precision))
        return m + bias[:self.used].astype(dtype)


class AdaLNModulation(ComputeModule):
    """LayerNorm, then `·(1 + scale) + shift` from `linear(SiLU(emb))` (submodules `linear`,
    `norm`).

    The modulation Linear has `num_chunks`·D output rows, chunk c = rows c·D…(c+1)·D. `order`
    names the chunks that are used, in row order: ("shift", "scale", "gate") for CogVideoX's
    LayerNormZero, whose chunks 3–5 are dead text-stream rows (7B §3.3.1); ("shift", "scale") for
    the final AdaLayerNorm (7B §3.5: shift first). Only the used rows are multiplied. `emb_act` is
    SiLU(emb), computed once by the caller. Returns the modulated stream and a dict of the other
    used chunks (e.g. the gate), each `[B, 1, D]`.
    """

    num_chunks: int
    order: tuple[str, ...] = ("shift", "scale", "gate")
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, emb_act):
        width = x.shape[-1]
        if len(self.order) > self.num_chunks:
            raise ValueError(f"{len(self.order)} chunks used of {self.num_chunks}")
        m = ModulationLinear(self.num_chunks * width, len(self.order) * width, name="linear",
                             **self.kw)(emb_act)
        chunks = dict(zip(self.order, jnp.split(m[:, None, :], len(self.order), axis=-1)))
        h = LayerNorm(self.epsilon, logical_axes=("embed",), param_dtype=self.param_dtype,
                      name="norm")(x)
        h = h * (1 + chunks.pop("scale")) + chunks.pop("shift")
        return h, chunks


class FeedForward(ComputeModule):
    """diffusers FeedForward "gelu-approximate": `net_0` (D → inner), tanh-GELU (`gelu_tanh`:
    only its input is kept for the backward pass), `net_2` (optionally zero-initialised)."""

    inner_features: int
    out_zero_init: bool = False

    @nn.compact
    def __call__(self, x):
        h = Linear(self.inner_features, ("embed", "mlp"), name="net_0", **self.kw)(x)
        h = gelu_tanh(h)
        return Linear(x.shape[-1], ("mlp", "embed"), kernel_init=output_init(self.out_zero_init),
                      name="net_2", **self.kw)(h)


class MVAttention(ComputeModule):
    """Attention with biased `to_q`/`to_k`/`to_v`/`to_out` and optional per-head affine
    LayerNorms `norm_q`/`norm_k` (and `norm_v`), over head_dim, one weight shared by all heads.

    Order: project → split heads (channel = head·head_dim + i) → norms → RoPE (q by `q_rope`, k
    by `k_rope`; v is never rotated) → SDPA through the `attention.dot_product_attention`
    registry (context-parallel over the video tokens when `context_parallel` is set) → merge
    heads → `to_out`. Same maths as `attention.cogvideox_attention`, plus
    logical axes per projection, `norm_v`, a boolean key `mask` and a zero-initialisable output
    projection.
    """

    num_heads: int
    head_dim: int
    qk_norm: bool = True
    v_norm: bool = False
    norm_eps: float = 1e-6
    rope_layout: str = INTERLEAVED
    implementation: str | AttentionKernel | None = None
    out_zero_init: bool = False
    context_parallel: str | None = None    # "self" | "cross": x is the context-sharded video

    @nn.compact
    def __call__(self, x, context=None, *, q_rope: RopeTable | None = None,
                 k_rope: RopeTable | None = None, mask=None):
        """`mask` (bool, True = attend) is broadcastable to `[B, heads, T, S]`."""
        context = x if context is None else context
        inner = self.num_heads * self.head_dim
        kw = self.kw
        q = Linear(inner, ("embed", "heads"), name="to_q", **kw)(x)
        k = Linear(inner, ("embed", "heads"), name="to_k", **kw)(context)
        v = Linear(inner, ("embed", "heads"), name="to_v", **kw)(context)
        q, k, v = (split_heads(a, self.num_heads) for a in (q, k, v))

        def norm(name):
            return LayerNorm(self.norm_eps, logical_axes=("kv",), param_dtype=self.param_dtype,
                             name=name)
        if self.qk_norm:
            q, k = norm("norm_q")(q), norm("norm_k")(k)
        if self.v_norm:
            v = norm("norm_v")(v)
        if q_rope is not None:
            q = apply_rope(q, q_rope, self.rope_layout)
        if k_rope is not None:
            k = apply_rope(k, k_rope, self.rope_layout)
        out = dot_product_attention(q, k, v, mask=mask, implementation=self.implementation,
                                    context_parallel=self.context_parallel)
        out = out.reshape(*out.shape[:2], inner)
        return Linear(x.shape[-1], ("heads", "embed"), kernel_init=output_init(self.out_zero_init),
                      name="to_out", **kw)(out)

