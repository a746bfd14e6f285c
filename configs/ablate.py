"""Ablation grids run by `python -m mtvjax.tools.ablate`. Variants: `tokenizer`, `reset_rule`, `pe`,
`isa`, `smoke`.

  python -m mtvjax.tools.ablate --config configs/ablate.py:tokenizer --workdir /tmp/abl_tok
  python -m mtvjax.tools.ablate --config configs/ablate.py:pe --config.steps=500 --config.only=pe_4d

Every row trains a base config (`bases`: the `tiny` 4DMoT or the `tiny` 7B MV-DiT) with, in this
order, the family's CPU-sized `presets`, the harness's data and step settings, then the row's
`overrides` (dotted config keys → values; a key the base config lacks fails the row, not the
grid). Data: procedural motion shards and synthetic MV-DiT latent shards built into
`WORKDIR/data` once (sizes in `data`), motion shards built from real files
(`data.motion_inputs`), or existing datasets (`data.motion_path`, `data.latents_path`).

* `tokenizer`: the paper's 4DMoT switches on the tiny preset. The baseline is the paper's method
  (EMA-quantised tokens, differential motion, (t, x, y, z) coordinates); `no_quant` bypasses the
  quantizer (continuous tokens), `no_differential` drops the first-frame subtraction, `quant_3d`
  quantises over (t, x, y) only (depth dropped; its MPJPE is over x, y).
* `reset_rule`: the 4DMoT quantizer's dead-code reset (`quantizer.reset_rule`): the paper's
  (every dead code, every 20 steps) against the released trainer's (only codes never alive at a
  non-reset step), at equal steps and batch, on real motion: the MTVCrafter NLF sample and the
  CMU BVH files of the shared data folder (`MTVJAX_SHARED_DATA`, default `../shared/data`), at
  30 fps, a quarter of the clips held out; with the tiny 256-code codebook and with 4096 codes.
  Extra columns: held-out PA-MPJPE, code usage on the
  held-out batches, codes with EMA count >= 1 and in the `ever_used` mask, perplexity, and the
  last step's commitment loss.
* `pe`: the motion positional encodings of MV-DiT (`model.motion_pe`) and the query RoPE of the
  motion attention (`model.motion_query_rope`), on the tiny 7B.
* `isa`: MV-DiT with interspatial attention (`model.conditioning="isa"`, `model.isa` from
  `mtvjax.models.mvdit.isa.isa_config`; `mtvjax/models/mvdit/isa_conditioning.py`) against the baseline
  (motion attention on the records' stand-in tokens).
* `smoke`: two tokenizer rows and two MV-DiT rows (baseline, ISA) for a few steps (the test's
  grid).
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MTVJAX_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
MOTION_PES = ("4d", "dynamic", "learnable", "time", "xy", "xyz", "none")


def _row(name: str, base: str, **overrides) -> dict:
    return dict(name=name, base=base, overrides=overrides)


def _rows(base: str, *entries) -> list:
    return [_row(name, base, **overrides) for name, overrides in entries]


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = variant
    c.steps = 200                  # train steps of every row
    c.only = ""                    # comma-separated row names or indices to run ("" = all)
    c.reuse = True                 # keep rows already finished with the same settings
    c.prepare_only = False         # build the data, then stop
    c.collect_only = False         # only write the table from rows already run
    c.print_commands = False       # print per row `CONFIG WORKDIR --config.k=v ...` (launch/)
    c.columns = ()                 # extra table columns: `eval.KEY` (final evaluation) or
                                   # `train.KEY` (last train step) metrics
    c.bases = ml_collections.ConfigDict(dict(
        tokenizer=os.path.join(REPO, "configs", "4dmot.py") + ":tiny",
        mvdit=os.path.join(REPO, "configs", "mvdit.py") + ":tiny",
    ))
    # CPU-sized settings applied to every row of a family (nested, so overridable as
    # --config.presets.mvdit.data.batch_size=8).
    c.presets = ml_collections.ConfigDict(dict(
        tokenizer=dict(
            normalization=dict(differential=True),   # the paper's method as the baseline
            data=dict(batch_size=4, frame_counts=(33,), num_threads=1, prefetch=2),
            optim=dict(warmup_steps=10),
            train=dict(log_every=1, checkpoint_every=1000, keep_checkpoints=1, eval_batches=4),
        ),
        mvdit=dict(
            data=dict(batch_size=4, num_threads=1, prefetch=2),
            train=dict(log_every=1, checkpoint_every=1000, keep_checkpoints=1, eval_batches=4,
                       peak_flops_per_device=1e11),
        ),
    ))
    c.data = ml_collections.ConfigDict(dict(
        motion_path="",            # an existing motion dataset (data_pipeline.build); "" = build
        motion_inputs=(),          # real motion files/folders to build it from; () = procedural
        target_fps=0.0,            # the built clips' frame rate; 0 keeps each clip's own
        latents_path="",           # an existing latent dataset (data_pipeline.latents); "" = build
        motion_clips=64,           # procedural clips of the built motion shards
        motion_frames=(40, 120),
        val_fraction=0.2,          # share of clips held out (MPJPE / eval loss)
        latent_sequences=64,       # procedural clips cut into latent windows
        latent_config=os.path.join(REPO, "configs", "data", "synthetic_latents.py") + ":tiny",
        seed=0,
    ))

    if variant == "tokenizer":
        c.rows = _rows("tokenizer",
                       ("baseline", {}),
                       ("no_quant", {"quantizer.enabled": False}),
                       ("no_differential", {"normalization.differential": False}),
                       ("quant_3d", {"model.coord_dim": 2}))
    elif variant == "reset_rule":
        c.steps = 2010             # ends 10 updates after a reset: revived but unpicked codes
                                   # have decayed below count 1 again
        c.data.motion_inputs = (os.path.join(SHARED, "mtvcrafter_sample", "sampled_data.pkl"),
                                os.path.join(SHARED, "cmu_bvh"))
        c.data.target_fps = 30.0
        c.data.val_fraction = 0.25
        c.presets.tokenizer.data.update(batch_size=8, frame_counts=(33, 49))
        c.presets.tokenizer.train.update(log_every=10, eval_batches=8)
        c.columns = ("eval.pa_mpjpe_mm", "eval.active_codes", "eval.live_codes",
                     "eval.ever_used_codes", "eval.perplexity", "train.commit", "eval.commit")
        # 256 codes: the first batch (>= 1728 tokens) uses every code, so under the released
        # rule every code is in `ever_used` after update 1; 4096 codes: more than the first
        # batch's tokens, the codebook starts with noisy copies some of which no token picks.
        c.rows = _rows("tokenizer",
                       ("paper", {"quantizer.reset_rule": "paper"}),
                       ("released", {"quantizer.reset_rule": "released"}),
                       ("paper_4k", {"quantizer.reset_rule": "paper",
                                     "model.codebook_size": 4096}),
                       ("released_4k", {"quantizer.reset_rule": "released",
                                        "model.codebook_size": 4096}))
    elif variant == "pe":
        c.rows = (_rows("mvdit", *((f"pe_{pe}", {"model.motion_pe": pe}) for pe in MOTION_PES))
                  + _rows("mvdit", ("qrope_vision", {"model.motion_query_rope": "vision"}),
                          ("qrope_4d", {"model.motion_query_rope": "4d"})))
    elif variant == "isa":
        c.rows = _rows("mvdit",
                       ("baseline", {}),
                       ("isa", {"model.conditioning": "isa"}),
                       ("isa_every1", {"model.conditioning": "isa", "model.isa.every": 1}),
                       ("isa_bones", {"model.conditioning": "isa", "model.isa.points_per_bone": 2}))
    elif variant == "smoke":
        c.steps = 3
        c.data.update(motion_clips=16, motion_frames=(36, 60), val_fraction=0.25,
                      latent_sequences=12)
        c.presets.tokenizer.train.eval_batches = 1
        c.presets.mvdit.train.eval_batches = 1
        c.rows = (_rows("tokenizer", ("tok_baseline", {}),
                        ("tok_no_quant", {"quantizer.enabled": False}))
                  + _rows("mvdit", ("mvdit_baseline", {}),
                          ("mvdit_isa", {"model.conditioning": "isa"})))
    else:
        raise ValueError(f"unknown ablation {variant!r}: use tokenizer, reset_rule, pe, isa or "
                         "smoke")
    return c
