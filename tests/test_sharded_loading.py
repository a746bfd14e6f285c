"""Low-precision conversion and sharded restoring of MV-DiT checkpoints, and sampling on a mesh.

`mtvjax convert mvdit7b|mvdit17b --dtype` stores the parameters in that dtype (bfloat16 by
default); `restore_mvdit7b` / the 17B's `load_converted` restore them straight into the shardings
of a mesh (8 simulated CPU devices in a subprocess), in the stored dtype or cast shard by shard;
peak host memory of such a restore stays well below a float32 copy; the animators sample the same
latents on an 8-device mesh (FSDP with context parallelism for the 7B, FSDP with tensor
parallelism for the 17B; `chunked` attention chosen in the animate config) as on one device
(`auto`).
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from animate_helpers import WINDOW, _config, write_random_sets
from conftest import REPO_ROOT, simulated_devices_env
from mtvjax.checkpoint.conversion import slot_of
from mtvjax.checkpoint.manager import read_config, stored_arrays
from mtvjax.config import load_config
from mtvjax.models.layers.attention import AttentionKernel
from mtvjax.models.mvdit.cogvideox import convert as conv7b
from mtvjax.models.mvdit.wan import convert as conv17b
from mtvjax.models.mvdit.wan.config import wan_config
from mtvjax.tools import random_checkpoints



def _random_source(table, rules, targets, path, seed=0):
    """A released-format safetensors file with random tensors in the shapes the name table
    expects (each entry's first accepted source shape for its target slot)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for e in table:
        slot_shape = tuple(targets[e.target])[len(slot_of(e.index)):]
        shape = tuple(rules[e.rule].source_shapes(slot_shape)[0])
        tensors[e.source] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    save_file(tensors, str(path))
    return path


def _source_7b(tmp_path):
    config = load_config(f"{REPO_ROOT}/configs/mvdit.py:tiny")
    model = conv7b.mv.from_config(config)
    return _random_source(conv7b.name_table(config.model), conv7b.rules(
        config.model.patch_size, config.model.out_channels), conv7b.target_shapes(model),
        tmp_path / "mvdit7b.safetensors")


def _source_17b(tmp_path):
    config = wan_config("tiny17b")
    targets = {k: tuple(v.shape) for k, v in
               traverse_util.flatten_dict(conv17b.param_shapes(config)).items()}
    return _random_source(conv17b.name_table(config), conv17b.RULES, targets,
                          tmp_path / "mvdit17b.safetensors", seed=1)


def _convert_cli(model, src, dst, *extra):
    out = subprocess.run([sys.executable, "-m", "mtvjax.cli", "convert", model, "--src", str(src),
                          "--dst", str(dst), *extra], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return str(dst)


def _dtypes(directory) -> set:
    return {str(m.dtype) for m in jax.tree.leaves(stored_arrays(directory, None, "params"))}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both families converted by the CLI: default (bfloat16) and --dtype float32."""
    root = tmp_path_factory.mktemp("converted")
    src7, src17 = _source_7b(root), _source_17b(root)
    return {
        "7b_bf16": _convert_cli("mvdit7b", src7, root / "7b_bf16", "--variant", "tiny"),
        "7b_f32": _convert_cli("mvdit7b", src7, root / "7b_f32", "--variant", "tiny",
                               "--dtype", "float32"),
        "17b_bf16": _convert_cli("mvdit17b", src17, root / "17b_bf16", "--variant", "tiny17b"),
        "17b_f32": _convert_cli("mvdit17b", src17, root / "17b_f32", "--variant", "tiny17b",
                                "--dtype", "float32"),
    }


def test_convert_stores_the_requested_dtype(converted):
    for family in ("7b", "17b"):
        assert _dtypes(converted[f"{family}_bf16"]) == {"bfloat16"}
        assert _dtypes(converted[f"{family}_f32"]) == {"float32"}
        for dtype in ("bf16", "f32"):
            config_json, _ = read_config(converted[f"{family}_{dtype}"])
            assert config_json["conversion"]["save_dtype"] == {"bf16": "bfloat16",
                                                              "f32": "float32"}[dtype]
    # the bfloat16 checkpoint is the float32 one rounded, tensor by tensor
    _, _, p16 = conv7b.restore_mvdit7b(converted["7b_bf16"])
    _, _, p32 = conv7b.restore_mvdit7b(converted["7b_f32"])
    for a, b in zip(jax.tree.leaves(p16), jax.tree.leaves(p32)):
        assert a.dtype == ml_dtypes.bfloat16 and b.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(ml_dtypes.bfloat16))


SHARDED_RESTORE = """
import json, sys
import jax, numpy as np
from mtvjax.config import load_config
from mtvjax.models.mvdit.cogvideox import convert as conv7b, model as mv
from mtvjax.models.mvdit.wan import convert as conv17b, model as W
from mtvjax.parallel.mesh import make_mesh
from mtvjax.parallel.sharding import param_shardings
paths = json.loads(sys.argv[1])
assert jax.device_count() == 8
rules = tuple(tuple(r) for r in load_config(paths["mvdit_config"] + ":tiny").sharding_rules)
mesh = make_mesh(dict(data=1, fsdp=4, tensor=2))
report = {}
for family in ("7b", "17b"):
    for stored, dtype in (("bf16", None), ("f32", "bfloat16"), ("f32", None)):
        path = paths[family + "_" + stored]
        if family == "7b":
            _, model, plain = conv7b.restore_mvdit7b(path, params_dtype=dtype)
            _, _, sharded = conv7b.restore_mvdit7b(path, params_dtype=dtype, mesh=mesh, rules=rules)
            want = param_shardings(mv.logical_axes(model), mv.abstract_params(model), mesh, rules)
        else:
            config, plain = conv17b.load_converted(path, dtype=dtype)
            _, sharded = conv17b.load_converted(path, dtype=dtype, mesh=mesh, rules=rules)
            want = param_shardings(W.param_logical_axes(config), W.param_shapes(config), mesh,
                                   rules)
        axes = set()
        for a, b, s in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded), jax.tree.leaves(want)):
            assert b.sharding == s, (b.sharding, s)
            assert len(b.sharding.device_set) == 8 and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            axes |= {n for p in s.spec if p for n in ((p,) if isinstance(p, str) else p)}
        report[f"{family}_{stored}_{dtype}"] = {"dtypes": sorted({str(b.dtype) for b in
                                                jax.tree.leaves(sharded)}), "axes": sorted(axes)}
print("REPORT" + json.dumps(report))
"""


def _run(script, *args, env=None):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                         capture_output=True, text=True, timeout=900,
                         env=simulated_devices_env(8, **(env or {})))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.split("REPORT", 1)[1])


def test_sharded_restore_on_eight_devices_equals_the_plain_one(converted):
    paths = {**converted, "mvdit_config": f"{REPO_ROOT}/configs/mvdit.py"}
    report = _run(SHARDED_RESTORE, json.dumps(paths))
    for family in ("7b", "17b"):
        assert report[f"{family}_bf16_None"]["dtypes"] == ["bfloat16"]   # as stored
        assert report[f"{family}_f32_None"]["dtypes"] == ["float32"]     # old checkpoints load
        assert report[f"{family}_f32_bfloat16"]["dtypes"] == ["bfloat16"]  # cast while read
        assert report[f"{family}_bf16_None"]["axes"] == ["fsdp", "tensor"]   # really sharded


PEAK_RSS = """
import json, sys
import jax
from mtvjax.models.mvdit.wan.convert import load_converted
from mtvjax.parallel.mesh import make_mesh
path, warmup, dtype = sys.argv[1], sys.argv[2], (None if sys.argv[3] == "none" else sys.argv[3])
rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("time_embed", "fsdp"))
mesh = make_mesh(dict(data=1, fsdp=8, tensor=1))
load_converted(warmup, dtype=dtype, mesh=mesh, rules=rules)   # Orbax and TensorStore loaded
def peak():   # this process's peak resident set (ru_maxrss would carry the forking parent's)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
before = peak()
_, params = load_converted(path, dtype=dtype, mesh=mesh, rules=rules)
jax.block_until_ready(params)
print("REPORT" + json.dumps({"growth": peak() - before, "baseline": before,
                             "bytes": sum(x.nbytes for x in jax.tree.leaves(params))}))
"""


def _big_17b(dst, dtype):
    """A wan checkpoint of 169 M parameters (337 MB in bfloat16), written leaf by leaf."""
    config = wan_config("tiny17b", dim=1024, num_heads=8, num_layers=8, ffn_dim=4096,
                        text_dim=64, image_dim=64)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (rng.standard_normal(x.shape, np.float32) * 0.02).astype(
        dtype), conv17b.param_shapes(config))
    conv17b.save_params(str(dst), params, config, "custom", {"save_dtype": np.dtype(dtype).name})
    return sum(x.size for x in jax.tree.leaves(params))


def test_sharded_restore_peak_memory_stays_below_a_float32_copy(tmp_path):
    """Peak RSS growth of restoring onto an 8-device FSDP mesh (all devices are host memory
    here, so the restored model itself counts once). glibc is told to return freed large
    buffers (MALLOC_MMAP_THRESHOLD_), so the figure is live memory, not its allocator cache."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("reads the peak resident set from /proc/self/status (Linux)")
    warmup = random_checkpoints.write_set(str(tmp_path / "tiny"), "wan", WINDOW,
                                          text_encoder=False)["mvdit"]
    count = _big_17b(tmp_path / "bf16", ml_dtypes.bfloat16)
    _big_17b(tmp_path / "f32", np.float32)
    f32_bytes, env = 4 * count, {"MALLOC_MMAP_THRESHOLD_": "65536"}
    bf16 = _run(PEAK_RSS, tmp_path / "bf16", warmup, "none", env=env)
    old = _run(PEAK_RSS, tmp_path / "f32", warmup, "bfloat16", env=env)
    print(f"\nbf16 checkpoint -> bf16: peak growth {bf16['growth'] / 1e6:.0f} MB; float32 "
          f"checkpoint -> bf16: {old['growth'] / 1e6:.0f} MB; params {bf16['bytes'] / 1e6:.0f} "
          f"MB bf16, {f32_bytes / 1e6:.0f} MB float32")
    assert bf16["bytes"] == old["bytes"] == 2 * count
    # the restored bf16 params plus bounded transients, well below a float32 copy
    assert bf16["growth"] < 0.75 * f32_bytes
    # an old float32 checkpoint cast shard by shard: no float32 copy beside the bf16 one
    assert old["growth"] < 2 * count + 0.5 * f32_bytes


SAMPLE_ON_MESH = """
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from test_sharded_loading import sample_latents
out = {}
for family, mesh in (("7b", dict(data=1, fsdp=4, context=2, tensor=1)),
                     ("17b", dict(data=1, fsdp=4, context=1, tensor=2))):
    latents, sharding = sample_latents(family, json.loads(sys.argv[2])[family], mesh,
                                       attention="chunked")
    np.save(sys.argv[3] + "/" + family + ".npy", latents)
    out[family] = sharding
print("REPORT" + json.dumps(out))
"""


def sample_latents(family, checkpoint_set, mesh=None, attention=None):
    """One window's latents from the family's animator (2 steps, fixed random tokens), and the
    sharding spec of one large parameter; `attention`: `model.attention` of the config (the
    kernel is checked to reach the model)."""
    from mtvjax.sample.animate import build_animator
    config = _config(family, checkpoint_set,
                     prompt_embeddings=checkpoint_set.get("prompt_embeddings", ""))
    if family == "17b":
        config.checkpoints.text_encoder = ""
    if mesh is not None:
        config.mesh = ml_collections.ConfigDict(mesh)
    if attention is not None:
        config.model.update(attention=attention, attention_chunk=16, attention_kv_chunk=8)
    animator = build_animator(config, progress=False)
    kernel = (animator.model.attention_implementation if family == "7b" else
              animator.model.config.attention_kernel)
    assert kernel == AttentionKernel(config.model.attention, config.model.attention_chunk,
                                     config.model.attention_kv_chunk), kernel
    reference = np.random.default_rng(0).uniform(-1, 1, (64, 64, 3)).astype(np.float32)
    cond = animator.prepare(reference, WINDOW, jax.random.PRNGKey(1))
    latent_frames = 1 + (WINDOW - 1) // 4
    tokens = np.random.default_rng(2).standard_normal(
        (1, latent_frames * 24, animator.motion_width)).astype(np.float32)
    latents = animator.sample(cond, tokens, jax.random.PRNGKey(3))
    spec = str(max(jax.tree.leaves(animator.params), key=lambda a: a.size).sharding.spec)
    return np.asarray(latents, np.float32), spec


@pytest.fixture(scope="module")
def animate_sets(tmp_path_factory):
    return write_random_sets(tmp_path_factory.mktemp("sets"))


def test_animators_sample_the_same_latents_on_eight_devices(animate_sets, tmp_path):
    sets = {k: {n: v for n, v in s.items() if n != "flags"} for k, s in animate_sets.items()}
    specs = _run(SAMPLE_ON_MESH, REPO_ROOT / "tests", json.dumps(sets), tmp_path)
    assert "fsdp" in specs["7b"] and "fsdp" in specs["17b"]
    assert "context" in specs["7b"]        # parameters sharded over fsdp × context
    for family in ("7b", "17b"):
        one, _ = sample_latents(family, sets[family])     # this process: one CPU device
        eight = np.load(tmp_path / f"{family}.npy")
        assert np.isfinite(one).all() and one.std() > 0.1
        np.testing.assert_allclose(eight, one, rtol=0, atol=2e-3 * float(np.abs(one).max()))
