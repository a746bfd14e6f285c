"""The ablation harness: the `smoke` grid end to end (data built in the workdir, two 4DMoT rows and
two MV-DiT rows (motion attention, ISA) trained, a failing row recorded without aborting), row
selection, overrides, reuse of finished rows and the per-row `mtvjax train` commands for the
launch scripts."""
from __future__ import annotations

import json
import math
import shlex

import ml_collections
import pytest

from conftest import load_config
from mtvjax.config import load_config as load_spec
from mtvjax.tools import ablate, ablation_rows

BAD_ROW = dict(name="bad_key", base="tokenizer", overrides={"model.no_such_switch": 1})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    config = load_config("ablate.py", "smoke")
    config.rows = list(config.rows) + [BAD_ROW]
    workdir = tmp_path_factory.mktemp("ablate")
    return config, workdir, ablate.run_ablation(config, workdir)


def test_smoke_grid_writes_the_table(smoke):
    config, workdir, out = smoke
    rows = json.loads((workdir / "ablation.json").read_text())["rows"]
    assert [r["name"] for r in rows] == [r["name"] for r in config.rows]
    by_name = {r["name"]: r for r in rows}
    for name in ("tok_baseline", "tok_no_quant", "mvdit_baseline", "mvdit_isa"):
        r = by_name[name]
        assert r["status"] == "ok", r["error"]
        assert r["final_step"] == config.steps
        for key in ("train_loss", "train_loss_tail", "step_time_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert r["params"] > 0
    for name in ("tok_baseline", "tok_no_quant"):              # held-out reconstruction error
        assert math.isfinite(by_name[name]["val_mpjpe_mm"])
    assert math.isfinite(by_name["mvdit_baseline"]["val_loss"])
    assert math.isfinite(by_name["mvdit_isa"]["val_loss"])           # interspatial attention
    assert by_name["mvdit_isa"]["params"] != by_name["mvdit_baseline"]["params"]
    assert by_name["tok_no_quant"]["eval"]["active_codes"] == 0.0   # quantizer bypassed
    bad = by_name["bad_key"]
    assert bad["status"] == "error" and "model.no_such_switch" in bad["error"]
    assert (workdir / "runs" / "bad_key" / "log.txt").is_file()
    markdown = (workdir / "ablation.md").read_text()
    assert markdown.count("\n| ") == len(config.rows) + 1       # header + one line per row
    assert "| tok_no_quant | tokenizer | quantizer.enabled=False | ok |" in markdown
    assert out["table"] in markdown
    # both datasets were built once, with a held-out split
    for key in ("motion", "latents"):
        manifest = json.loads((workdir / "data" / key / "manifest.json").read_text())
        assert manifest["splits"]["val"]["records"] > 0


def test_finished_rows_are_reused_and_collected(smoke, capsys):
    config, workdir, out = smoke
    again = ml_collections.ConfigDict(config.to_dict())
    again.only = "tok_baseline,2"                               # by name and by index
    rerun = ablate.run_ablation(again, workdir)
    assert [r["wall_s"] for r in rerun["rows"]] == [r["wall_s"] for r in out["rows"]]
    printed = capsys.readouterr().out
    assert "tok_baseline: reusing its finished run" in printed and ": training" not in printed
    again.only, again.collect_only = "", True
    collected = ablate.run_ablation(again, workdir)
    assert collected["table"] == out["table"]


def test_print_commands_for_the_launch_scripts(smoke, capsys):
    config, workdir, _ = smoke
    again = ml_collections.ConfigDict(config.to_dict())
    again.update(print_commands=True, only="tok_no_quant")
    ablate.run_ablation(again, workdir)
    args = shlex.split(capsys.readouterr().out.strip())
    assert args[0].endswith("configs/4dmot.py:tiny")
    assert args[1] == str(workdir / "runs" / "tok_no_quant")
    assert "--config.quantizer.enabled=False" in args
    assert "--config.data.frame_counts=(33,)" in args
    assert f"--config.train.num_steps={config.steps}" in args


def test_overrides_and_row_selection():
    base = load_config("4dmot.py", "tiny")
    out = ablation_rows.apply_overrides(base, {"quantizer.enabled": False, "data.frame_counts": [33]})
    assert out.quantizer.enabled is False and out.data.frame_counts == (33,)
    assert base.quantizer.enabled is True                       # the base is not modified
    for key in ("model.motion_pe", "nosection.key"):
        with pytest.raises(ablation_rows.UnknownConfigKey, match=key):
            ablation_rows.apply_overrides(base, {key: "4d"})
    with pytest.raises(TypeError):
        ablation_rows.apply_overrides(base, {"quantizer.enabled": "yes"})
    rows = load_config("ablate.py", "tokenizer").rows
    assert [r["name"] for r in ablation_rows.select_rows(rows, "1,quant_3d")] == ["no_quant", "quant_3d"]
    with pytest.raises(ValueError):
        ablation_rows.select_rows(rows, "nope")
    for variant in ("tokenizer", "reset_rule", "pe", "isa", "smoke"):
        config = load_config("ablate.py", variant)
        ablation_rows.check_rows(config.rows)
        assert config.rows and all(r["base"] in ablation_rows.FAMILIES for r in config.rows)
        for row in config.rows:                        # every row's keys exist in its base
            ablation_rows.apply_overrides(load_spec(config.bases[row["base"]]), row["overrides"])


def test_real_motion_inputs_must_exist_and_extra_columns_show(tmp_path):
    config = load_config("ablate.py", "reset_rule")
    config.data.motion_inputs = (str(tmp_path / "absent.pkl"),)
    with pytest.raises(FileNotFoundError, match=r"config\.data\.motion_inputs: .*absent\.pkl"):
        ablate.motion_inputs(config, tmp_path / "motion")
    row = {"name": "r", "eval": {"pa_mpjpe_mm": 12.5}, "train": {"commit": 0.25}}
    table = ablate.format_table([row], ("eval.pa_mpjpe_mm", "train.commit", "eval.absent"))
    assert table.splitlines()[0].endswith("| eval.pa_mpjpe_mm | train.commit | eval.absent | error |")
    assert table.splitlines()[2].endswith("| 12.5 | 0.25 | — |  |")
