"""LoRA adapters on a frozen MV-DiT (`optim.trainable="lora"`, both families).

* **representation.** The train state's `params` holds the model's parameters plus one extra
  top-level entry `lora` (`KEY`): for the kernel at path P, `lora/P/a` and `lora/P/b`. The
  optimiser sees only that entry (the trainable split); the loss calls `effective_params`, which
  strips it and hands the model W + (alpha/rank)·A@B for every target, so the base parameters
  get no gradient and stay bit-identical. `params["lora"]` alone is what a run saves beside its
  checkpoints (`save_adapters`).
* **targets.** `optim.lora.targets`: regular expressions searched (`re.search`) in each parameter
  path joined with "/"; the default (configs/mvdit.py) picks the attention projections of both
  families (cogvideox: q/k/v/out of `attn1` (self) and `attn0` (motion); wan: q/k/v/o of
  `self_attn`, `cross_attn` (text; not its image keys `k_img`/`v_img`) and `motion_attn`).
* **shapes.** A kernel's axes are [stacked..., in..., out...]: the stacked axes are its leading
  `layers`/`sublayers` logical axes (scanned blocks: one adapter per layer); the input side is
  the next axis, together with the following `kv` axis when that one is `heads` (a head-split
  input: the output projections' [heads, kv, embed]); the output side is the rest. A is
  [stacked..., in..., rank], B [stacked..., rank, out...], and the update is A@B over the
  flattened in/out axes, reshaped to the kernel. E.g. cogvideox `attn1/to_q` [L, D, D]: A [L, D, r],
  B [L, r, D]; wan `self_attn/q` [G, k, D, n, d]: A [G, k, D, r], B [G, k, r, n, d];
  `self_attn/o` [G, k, n, d, D]: A [G, k, n, d, r], B [G, k, r, D]. A and B keep the kernel's
  logical axes (the rank axis is unsharded), so they shard like their kernel.
* **init.** A ~ N(0, (1/rank)²) (PEFT's "gaussian" LoRA init), B = 0: step 0 is the base model.
"""
from __future__ import annotations

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

KEY = "lora"
STACKED_AXES = ("layers", "sublayers")
FILE_NAME = "lora_adapters.safetensors"   # in the workdir, replaced at every checkpoint


def scale(lora_config) -> float:
    """alpha / rank."""
    return float(lora_config.alpha) / int(lora_config.rank)


def _split(names: tuple) -> tuple[int, int]:
    """(stacked axes, input axes) of a kernel with logical axis `names` (module docstring)."""
    stacked = 0
    while stacked < len(names) and names[stacked] in STACKED_AXES:
        stacked += 1
    inputs = 1
    if names[stacked:stacked + 2] == ("heads", "kv") and len(names) - stacked > 2:
        inputs = 2
    return stacked, inputs


def plan(shapes: dict, names: dict, lora_config) -> dict:
    """{kernel path: (A shape, A axes, B shape, B axes)} of the targets among `shapes`
    ({path tuple: shape}); `names` maps paths to logical axis names (absent: unnamed)."""
    rank = int(lora_config.rank)
    if rank < 1:
        raise ValueError(f"optim.lora.rank={rank}: must be at least 1")
    patterns = [re.compile(p) for p in lora_config.targets]
    out = {}
    for path, shape in shapes.items():
        joined = "/".join(path)
        if not any(p.search(joined) for p in patterns):
            continue
        axes = tuple(names.get(path) or (None,) * len(shape))
        s, i = _split(axes)
        if len(shape) - s < 2:
            raise ValueError(f"optim.lora.targets selects {joined} {tuple(shape)}, which is "
                             "not a matrix")
        shape = tuple(shape)
        out[path] = (shape[:s + i] + (rank,), axes[:s + i] + (None,),
                     shape[:s] + (rank,) + shape[s + i:], axes[:s] + (None,) + axes[s + i:])
    if not out:
        raise ValueError(f"optim.lora.targets {tuple(lora_config.targets)} select no parameter")
    return out


def _nest(flat: dict) -> dict:
    return traverse_util.unflatten_dict({path + (ab,): v for path, pair in flat.items()
                                         for ab, v in zip("ab", pair)})


def init_adapters(params, lora_config, rng) -> dict:
    """Boxed adapters `{P: {a, b}}` (float32) for the targets among boxed `params`."""
    flat = traverse_util.flatten_dict(params)
    shapes = {k: nn.meta.unbox(v).shape for k, v in flat.items()}
    names = {k: tuple(v.names) for k, v in flat.items() if isinstance(v, nn.Partitioned)}
    adapters = {}
    for n, (path, (a_shape, a_axes, b_shape, b_axes)) in enumerate(sorted(
            plan(shapes, names, lora_config).items())):
        a = jax.random.normal(jax.random.fold_in(rng, n), a_shape, jnp.float32)
        a = a / int(lora_config.rank)
        adapters[path] = (nn.Partitioned(a, names=a_axes),
                          nn.Partitioned(jnp.zeros(b_shape, jnp.float32), names=b_axes))
    return _nest(adapters)


def abstract_adapters(abstract_params, logical_axes, lora_config) -> dict:
    """ShapeDtypeStructs (float32) of the adapters of a model's unboxed abstract params and its
    tree of logical PartitionSpecs (for restoring a run's checkpoint)."""
    shapes = {k: v.shape for k, v in traverse_util.flatten_dict(abstract_params).items()}
    names = {k: tuple(v) for k, v in traverse_util.flatten_dict(logical_axes).items()}
    return _nest({path: (jax.ShapeDtypeStruct(a, jnp.float32), jax.ShapeDtypeStruct(b, jnp.float32))
                  for path, (a, _, b, _) in plan(shapes, names, lora_config).items()})


def delta(a, b, kernel_shape) -> jnp.ndarray:
    """A@B of one adapter, shaped like its kernel (float32)."""
    stacked = a.ndim + b.ndim - len(kernel_shape) - 2
    lead = a.shape[:stacked]
    a2 = a.reshape(lead + (-1, a.shape[-1])).astype(jnp.float32)
    b2 = b.reshape(lead + (b.shape[stacked], -1)).astype(jnp.float32)
    return jnp.matmul(a2, b2).reshape(kernel_shape)


def apply_lora(base_params, adapters, lora_scale: float) -> dict:
    """`base_params` with each adapted kernel W replaced by W + lora_scale·A@B (W's dtype)."""
    flat = traverse_util.flatten_dict(base_params)
    pairs = traverse_util.flatten_dict(adapters)
    for path in {k[:-1] for k in pairs}:
        if path not in flat:
            raise ValueError(f"LoRA adapter for {'/'.join(path)}, which the model lacks")
        w = flat[path]
        update = delta(pairs[path + ("a",)], pairs[path + ("b",)], w.shape)
        flat[path] = (w.astype(jnp.float32) + lora_scale * update).astype(w.dtype)
    return traverse_util.unflatten_dict(flat)


def effective_params(params, lora_scale: float) -> dict:
    """The model's parameters of a train state's `params`: adapters merged when it holds them."""
    if KEY not in params:
        return params
    base = {k: v for k, v in params.items() if k != KEY}
    return apply_lora(base, params[KEY], lora_scale)


def save_adapters(path, adapters, metadata: dict) -> None:
    """Writes `adapters` (host arrays) as safetensors `P/a`, `P/b` ("/"-joined paths) with
    `metadata` as JSON strings; written beside and renamed, so the file is always whole
    (`path` local or an `etils.epath` URL such as gs://)."""
    from safetensors.numpy import save
    tensors = {"/".join(k): np.ascontiguousarray(np.asarray(v, np.float32))
               for k, v in traverse_util.flatten_dict(adapters).items()}
    path = epath.Path(path)
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()}))
    tmp.replace(path)


def load_adapters(path) -> tuple[dict, dict]:
    """(adapters as numpy arrays, metadata) of a file written by `save_adapters`."""
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        flat = {tuple(k.split("/")): f.get_tensor(k) for k in f.keys()}
    return traverse_util.unflatten_dict(flat), metadata
