"""RoPE tables and rotation: layouts, band splits, 3-D vision and 4-D motion tables."""
from __future__ import annotations

import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtvjax.models.layers import rope as R
from mtvjax.models.mvdit.wan.config import RELEASED_CENTRED_JOINTS

LAYOUTS = (R.INTERLEAVED, R.HALF_SPLIT)

DOC_17B = Path(__file__).resolve().parents[1] / "docs" / "reference" / "mvdit17b.md"


def doc_centred_joints() -> np.ndarray:
    """Centred dataset-mean joints in mm (x, y, z for joints 0…23) as written in the code block
    of docs/reference/mvdit17b.md §5.2, rows `jN x y z`, two joints per line."""
    text = DOC_17B.read_text(encoding="utf-8")
    section = text[text.index("### 5.2"):text.index("### 5.3")]
    block = section[section.index("```"):section.rindex("```")]
    rows = {int(j): xyz for j, *xyz in re.findall(r"\bj(\d+)\s+(\S+)\s+(\S+)\s+(\S+)", block)}
    assert sorted(rows) == list(range(24)), f"{DOC_17B} §5.2: joints {sorted(rows)}"
    return np.array([[float(v) for v in rows[j]] for j in range(24)], np.float32)


def _random_mean(seed=0):
    """A stand-in for mean.npy: mm-scale joints around a 1.78 m depth."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(24, 3)) * [100, 300, 50] + [0, 180, 1780]).astype(np.float32)


def _randn(shape, seed=0, dtype=jnp.float32):
    """Test inputs from numpy (eager threefry compiles slowly on CPU)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32), dtype)


def _band_slices(band_dims):
    """Pair-index slices of consecutive bands."""
    edges = np.cumsum([0] + [d // 2 for d in band_dims])
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _channels_of_pairs(pairs: slice, head_dim: int, layout: str) -> np.ndarray:
    idx = np.arange(pairs.start, pairs.stop)
    if layout == R.INTERLEAVED:
        return np.sort(np.concatenate([2 * idx, 2 * idx + 1]))
    return np.sort(np.concatenate([idx, idx + head_dim // 2]))


# ------------------------------------------------------------------------------------------------
# Band splits and shapes (numbers from the docs)
# ------------------------------------------------------------------------------------------------


def test_band_dims_match_docs():
    assert R.cogvideox_vision_band_dims(64) == (16, 24, 24)         # 7B §4
    assert R.cogvideox_motion_band_dims(64) == (16, 16, 16, 16)     # 7B §4
    assert R.wan_vision_band_dims(128) == (44, 42, 42)              # 17B §5.1
    assert R.wan_motion_band_dims(128) == (44, 28, 28, 28)          # 17B §5.2
    for bad in (40, 72):  # not a multiple of 16 for the 7B vision split
        with pytest.raises(ValueError):
            R.cogvideox_vision_band_dims(bad)
    with pytest.raises(ValueError):
        R.wan_motion_band_dims(64)


def test_real_size_shapes_and_dtype():
    mean = _random_mean()
    cases = [
        (R.cogvideox_vision_rope(13, 32, 32), (13 * 32 * 32, 32)),  # [13312, 64] full, 7B §4
        (R.wan_vision_rope(13, 40, 24), (13 * 40 * 24, 64)),        # 640×384, 17B §6.3
        (R.cogvideox_motion_rope(13, mean), (312, 32)),
        (R.wan_motion_rope(13, mean), (312, 64)),
    ]
    for table, shape in cases:
        chex.assert_shape([table.cos, table.sin], shape)
        assert table.cos.dtype == np.float32 and table.sin.dtype == np.float32
    with pytest.raises(ValueError):
        R.wan_vision_rope(1, 1025, 2)


def test_inv_freq_float32_matches_torch():
    torch = pytest.importorskip("torch")
    for dim in (16, 24, 28, 42, 44):
        ours = R.rope_inv_freq(dim)
        ref = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).numpy()
        assert ours.dtype == np.float32
        # 4 float32 ulp: torch's float32 pow rounds differently on AVX2 and AVX-512 (1 ulp seen).
        np.testing.assert_allclose(ours, ref, rtol=4 * np.finfo(np.float32).eps, atol=0)
    np.testing.assert_allclose(R.rope_inv_freq(44, dtype=np.float64),
                               10000.0 ** (-np.arange(0, 44, 2) / 44.0), rtol=1e-15)


# ------------------------------------------------------------------------------------------------
# Rotation
# ------------------------------------------------------------------------------------------------


class ApplyRopeTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_relative_position_property(self):
        """<R(p) q, R(p + d) k> depends on d only, in both layouts."""
        head_dim, offsets = 32, (0, 3, 11)
        starts = np.array([0, 5, 17, 40], np.float32)
        rng = np.random.default_rng(1)
        q = rng.normal(size=(1, 1, 2, head_dim)).astype(np.float32)
        k = rng.normal(size=(1, 1, 2, head_dim)).astype(np.float32)
        q_all = jnp.asarray(np.repeat(q, len(starts), axis=1))
        k_all = jnp.asarray(np.repeat(k, len(starts), axis=1))
        rotate = self.variant(R.apply_rope, static_argnums=2)
        for layout in LAYOUTS:
            for d in offsets:
                qr = rotate(q_all, R.rope_table_1d(starts, head_dim), layout)
                kr = rotate(k_all, R.rope_table_1d(starts + d, head_dim), layout)
                scores = np.asarray(jnp.sum(qr * kr, axis=-1))  # [1, len(starts), heads]
                np.testing.assert_allclose(scores, np.broadcast_to(scores[:, :1], scores.shape),
                                           rtol=2e-5, atol=2e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_float32_compute_and_dtype_roundtrip_bf16(self):
        table = R.rope_table_1d(np.arange(6), 16)
        x = _randn((2, 6, 3, 16), 0, jnp.bfloat16)
        for layout in LAYOUTS:
            out = self.variant(R.apply_rope, static_argnums=2)(x, table, layout)
            assert out.dtype == jnp.bfloat16
            ref = R.apply_rope(x.astype(jnp.float32), table, layout).astype(jnp.bfloat16)
            chex.assert_trees_all_close(out.astype(jnp.float32), ref.astype(jnp.float32),
                                        atol=1e-2, rtol=1e-2)
        rounded = table.astype(jnp.bfloat16)  # the 7B pipeline's bf16 tables
        assert rounded.cos.dtype == jnp.bfloat16
        out = R.apply_rope(x.astype(jnp.float32), rounded)
        assert out.dtype == jnp.float32
        chex.assert_trees_all_close(out, R.apply_rope(x.astype(jnp.float32), table), atol=3e-2)

    def test_batched_table(self):
        tables = [R.rope_table_1d(np.arange(5) + s, 8) for s in (0, 7)]
        batched = R.RopeTable(np.stack([t.cos for t in tables]), np.stack([t.sin for t in tables]))
        x = _randn((2, 5, 2, 8), 1)
        out = R.apply_rope(x, batched)
        for b, t in enumerate(tables):
            chex.assert_trees_all_close(out[b:b + 1], R.apply_rope(x[b:b + 1], t))


def test_rotation_matches_torch_reference_formulas():
    """Interleaved = diffusers' apply_rotary_emb(use_real_unbind_dim=-1) = Wan's complex multiply;
    half_split = Llama's rotate_half."""
    torch = pytest.importorskip("torch")
    seq, heads, head_dim = 7, 2, 16
    pos = torch.arange(seq, dtype=torch.float64) * 1.5
    inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.outer(pos, inv)
    x = torch.randn(1, seq, heads, head_dim, dtype=torch.float64)

    # diffusers: cos/sin repeat-interleaved, x·cos + rot(x)·sin with rot = (−x_odd, x_even).
    cos_f, sin_f = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
    xr, xi = x.reshape(1, seq, heads, -1, 2).unbind(-1)
    rot = torch.stack([-xi, xr], -1).flatten(3)
    diffusers = x * cos_f[None, :, None] + rot * sin_f[None, :, None]
    # Wan: view_as_complex over adjacent pairs times e^{i·angle}.
    wan = torch.view_as_real(torch.view_as_complex(x.reshape(1, seq, heads, -1, 2))
                             * torch.polar(torch.ones_like(ang), ang)[None, :, None]).flatten(3)
    # Llama: cat(freqs, freqs) and rotate_half.
    cos_h, sin_h = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2:]
    llama = x * cos_h[None, :, None] + torch.cat([-x2, x1], -1) * sin_h[None, :, None]

    table = R.rope_table_1d(pos.numpy(), head_dim, compute_dtype=np.float64)
    xj = jnp.asarray(x.numpy(), jnp.float32)
    np.testing.assert_allclose(R.apply_rope(xj, table, R.INTERLEAVED), diffusers.numpy(), atol=1e-5)
    np.testing.assert_allclose(R.apply_rope(xj, table, R.INTERLEAVED), wan.numpy(), atol=1e-5)
    np.testing.assert_allclose(R.apply_rope(xj, table, R.HALF_SPLIT), llama.numpy(), atol=1e-5)


def test_full_table_roundtrip_and_padding():
    table = R.cogvideox_vision_rope(2, 2, 3)
    for layout in LAYOUTS:
        cos, sin = R.rope_table_to_full(table, layout)
        chex.assert_shape([cos, sin], (12, 64))
        back = R.rope_table_from_full(cos, sin, layout)
        chex.assert_trees_all_equal(tuple(back), tuple(table))
    cos, _ = R.rope_table_to_full(table, R.INTERLEAVED)
    np.testing.assert_array_equal(cos[:, 0::2], cos[:, 1::2])  # repeat-interleave (7B §4)

    padded = R.pad_rope_table(table, 15)
    x = _randn((1, 15, 2, 64), 2)
    out = R.apply_rope(x, padded)
    chex.assert_trees_all_close(out[:, :12], R.apply_rope(x[:, :12], table))
    chex.assert_trees_all_close(out[:, 12:], x[:, 12:])  # padded tokens are left unrotated
    with pytest.raises(ValueError):
        R.apply_rope(x, table)  # 12 rows for 15 tokens
    with pytest.raises(ValueError):
        R.apply_rope(x[:, :12], table, "rotate_half")


# ------------------------------------------------------------------------------------------------
# 3-D vision tables
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_vision_band_layout(family):
    """Changing only t (resp. h, w) changes only the t (resp. h, w) band, in table and rotation."""
    frames, gh, gw = 3, 4, 5
    if family == "cogvideox":
        head_dim, table = 64, R.cogvideox_vision_rope(frames, gh, gw)
        bands = R.cogvideox_vision_band_dims(head_dim)
    else:
        head_dim, table = 128, R.wan_vision_rope(frames, gh, gw)
        bands = R.wan_vision_band_dims(head_dim)
    slices = _band_slices(bands)

    def row(t, h, w):  # patchified order: t slowest, then h, then w
        return (t * gh + h) * gw + w

    base = (1, 2, 3)
    x = _randn((1, 1, 1, head_dim), 3)
    for axis in range(3):
        moved = list(base)
        moved[axis] += 1
        r0, r1 = row(*base), row(*moved)
        changed = (~np.isclose(table.cos[r0], table.cos[r1])
                   | ~np.isclose(table.sin[r0], table.sin[r1]))
        expected = np.zeros(head_dim // 2, bool)
        expected[slices[axis]] = True
        np.testing.assert_array_equal(changed, expected)
        for layout in LAYOUTS:
            rot = [np.asarray(R.apply_rope(x, R.RopeTable(table.cos[r:r + 1], table.sin[r:r + 1]),
                                           layout))[0, 0, 0] for r in (r0, r1)]
            diff_channels = np.nonzero(~np.isclose(rot[0], rot[1]))[0]
            assert set(diff_channels) <= set(_channels_of_pairs(slices[axis], head_dim, layout))
            assert len(diff_channels) > 0

    # Positions are plain integers: row (t, h, w) equals the 1-D bands at t, h and w.
    t, h, w = 2, 3, 4
    expected = R.concat_rope_tables(*[R.rope_table_1d([p], d, compute_dtype=np.float64
                                                      if family == "wan" else np.float32)
                                      for p, d in zip((t, h, w), bands)])
    np.testing.assert_allclose(table.cos[row(t, h, w)], expected.cos[0], atol=1e-7)
    np.testing.assert_allclose(table.sin[row(t, h, w)], expected.sin[0], atol=1e-7)


def test_wan_vision_matches_torch_complex_table():
    """Independent re-derivation of Wan's rope_params / rope_apply (float64 complex)."""
    torch = pytest.importorskip("torch")
    head_dim, (f, h, w) = 128, (2, 3, 4)

    def rope_params(max_len, dim):
        freqs = torch.outer(torch.arange(max_len), 1.0 / torch.pow(
            10000, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
        return torch.polar(torch.ones_like(freqs), freqs)

    freqs = torch.cat([rope_params(1024, 128 - 4 * (128 // 6)), rope_params(1024, 2 * (128 // 6)),
                       rope_params(1024, 2 * (128 // 6))], dim=1)
    c = head_dim // 2
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    grid = torch.cat([ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                      fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                      fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1)
    grid = grid.reshape(f * h * w, 1, -1)
    x = torch.randn(1, f * h * w, 2, head_dim)
    ref = torch.view_as_real(torch.view_as_complex(
        x.to(torch.float64).reshape(1, f * h * w, 2, -1, 2)) * grid).flatten(3).float()
    ours = R.apply_rope(jnp.asarray(x.numpy()), R.wan_vision_rope(f, h, w))
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=2e-6)


# ------------------------------------------------------------------------------------------------
# 4-D motion tables
# ------------------------------------------------------------------------------------------------


def test_centred_joints_match_doc(mtvcrafter_sample):
    mean = np.load(mtvcrafter_sample / "mean.npy")
    centred = R.centre_joint_positions(mean)
    assert centred.dtype == np.float32
    np.testing.assert_array_equal(centred, doc_centred_joints())  # 17B §5.2, exact float32
    np.testing.assert_allclose([mean[:, a].mean() for a in range(3)],
                               [0.787477314, 183.034058, 1779.85254], rtol=1e-8)


def test_released_centred_joints_are_the_docs():
    """The 17B's built-in motion-table positions are the §5.2 numbers (no data needed)."""
    np.testing.assert_array_equal(RELEASED_CENTRED_JOINTS, doc_centred_joints())


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_motion_table_frame_major_and_bands(family):
    frames, mean = 3, _random_mean(2)
    if family == "cogvideox":
        head_dim, bands = 64, R.cogvideox_motion_band_dims()
        table = R.cogvideox_motion_rope(frames, mean)
        vision = R.cogvideox_vision_rope(frames, 2, 2)
    else:
        head_dim, bands = 128, R.wan_motion_band_dims()
        table = R.wan_motion_rope(frames, mean)
        vision = R.wan_vision_rope(frames, 2, 2)
    chex.assert_shape(table.cos, (frames * 24, head_dim // 2))
    centred = R.centre_joint_positions(mean)
    t_band, *xyz = _band_slices(bands)
    for f in range(frames):
        for j in (0, 7, 23):
            m = f * 24 + j
            expected = R.concat_rope_tables(
                R.rope_table_1d([f], bands[0]),
                *[R.rope_table_1d(centred[j, a:a + 1], bands[a + 1]) for a in range(3)])
            np.testing.assert_array_equal(table.cos[m], expected.cos[0])
            np.testing.assert_array_equal(table.sin[m], expected.sin[0])
        # The time band equals the vision t band of the same latent frame (7B §4, 17B §5.2).
        np.testing.assert_allclose(table.cos[f * 24, t_band], vision.cos[f * 4, t_band], atol=1e-7)
        np.testing.assert_allclose(table.sin[f * 24, t_band], vision.sin[f * 4, t_band], atol=1e-7)
    # Same joint, different frame: only the t band differs.
    np.testing.assert_array_equal(table.cos[5, t_band.stop:], table.cos[24 + 5, t_band.stop:])
    assert not np.allclose(table.cos[5, t_band], table.cos[24 + 5, t_band])
    # Same frame, joints differing only in x: only the x band differs.
    moved = mean.copy()
    moved[4, 0] += 100.0  # also moves the x column mean, so every joint's x changes
    other = R.motion_rope_table(frames, moved, bands)
    changed = ((table.cos != other.cos) | (table.sin != other.sin)).any(axis=0)
    expected = np.zeros(head_dim // 2, bool)
    expected[xyz[0]] = True
    np.testing.assert_array_equal(changed, expected)


@pytest.mark.parametrize("head_dim,bands", [(64, (16, 16, 16, 16)), (128, (44, 28, 28, 28))])
def test_motion_table_matches_torch_float32_builder(head_dim, bands):
    """A torch float32 re-derivation of the released builder (full repeat-interleaved tables)."""
    torch = pytest.importorskip("torch")
    frames, mean = 13, _random_mean(3)
    mean_t = torch.from_numpy(mean)
    centred = torch.stack([mean_t[:, a] - torch.from_numpy(np.asarray(mean[:, a].mean()))
                           for a in range(3)], dim=1)

    def band(pos, dim):
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        ang = torch.outer(pos.float(), inv)
        return ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)

    t_cos, t_sin = band(torch.arange(frames).float(), bands[0])
    sp = [band(centred[:, a], bands[a + 1]) for a in range(3)]
    cos = torch.cat([t_cos.repeat_interleave(24, 0)] + [c.repeat(frames, 1) for c, _ in sp], -1)
    sin = torch.cat([t_sin.repeat_interleave(24, 0)] + [s.repeat(frames, 1) for _, s in sp], -1)

    ours = R.motion_rope_table(frames, mean, bands)
    ours_cos, ours_sin = R.rope_table_to_full(ours, R.INTERLEAVED)
    # cos/sin of a float32 angle are only defined to ~1 ulp of the angle (up to ~mm-scale joints,
    # rounded differently per instruction set): 4 ulp of the largest angle, still far below a
    # wrong band or layout (errors of order 1).
    largest_angle = max(frames - 1, float(centred.abs().max()))
    atol = 4 * float(np.spacing(np.float32(largest_angle)))
    np.testing.assert_allclose(ours_cos, cos.numpy(), atol=atol)
    np.testing.assert_allclose(ours_sin, sin.numpy(), atol=atol)


def test_tables_are_float32_under_x64_and_unchanged():
    mean = _random_mean(4)
    builders = [lambda: R.cogvideox_vision_rope(2, 3, 4), lambda: R.wan_vision_rope(2, 3, 4),
                lambda: R.cogvideox_motion_rope(2, mean), lambda: R.wan_motion_rope(2, mean)]
    plain = [b() for b in builders]
    x32 = _randn((1, 24, 2, 64), 4)
    rotated = R.apply_rope(x32, plain[0])
    with jax.enable_x64(True):
        for table, b in zip(plain, builders):
            again = b()
            assert again.cos.dtype == np.float32 and again.sin.dtype == np.float32
            chex.assert_trees_all_equal(tuple(again), tuple(table))
        out = R.apply_rope(jnp.asarray(np.asarray(x32)), plain[0])
        assert out.dtype == jnp.float32
        chex.assert_trees_all_close(out, rotated, atol=1e-6)
        out64 = R.apply_rope(jnp.asarray(np.asarray(x32), jnp.float64), plain[0])
        assert out64.dtype == jnp.float64
