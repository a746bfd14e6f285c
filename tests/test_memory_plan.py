"""The memory plan compiles the real trainer step and sampling loop from the configs, and the
shipped full-size presets default to what the plan measures (remat, attention, mesh)."""
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT, load_config


def test_tiny_plan_compiles_the_trainer_and_the_sampler():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "mtvjax.bench.memory", "--tiny"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].startswith(("train-", "sample-")):
            rows[cells[0]] = cells
    assert set(rows) == {"train-tiny-context", "sample-tiny-2"}, out.stdout
    train, sample = rows["train-tiny-context"], rows["sample-tiny-2"]
    assert train[3] == "1, 2, 2, 1"          # data, fsdp, context, tensor over 4 devices
    assert sample[3] == "1, 2, 1, 1"         # animate.py's mesh: FSDP over the 2 devices
    for cells in rows.values():
        value, unit = re.match(r"([\d.]+) (GiB|MiB)", cells[7]).groups()
        peak = float(value) * (1 if unit == "GiB" else 2 ** -10)
        assert 0 < peak <= 1 and cells[9] == "yes", cells


def test_unknown_scenario_is_refused():
    out = subprocess.run([sys.executable, "-m", "mtvjax.bench.memory", "--only", "nope"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "unknown scenario" in out.stderr
    assert "Traceback" not in out.stderr


def test_full_size_presets_default_to_the_planned_setup():
    from mtvjax.parallel.context_attention import check_heads
    for variant, context in (("7b", 1), ("17b", 1), ("17b_720p", 8)):
        config = load_config("mvdit.py", variant)
        assert config.remat == "full", variant
        assert dict(config.mesh) == dict(data=1, fsdp=-1, context=context, tensor=1), variant
        field = "attention_implementation" if config.model.family == "cogvideox" else "attention"
        assert config.model[field] in ("auto", None), variant    # per-platform, memory-bounded
        check_heads(config.model.num_heads, dict(data=1, fsdp=2, context=context, tensor=1),
                    config.sharding_rules)
        assert config.train.dtype == "bfloat16"
    assert load_config("mvdit.py", "17b_720p").model == load_config("mvdit.py", "17b").model
    for variant in ("7b", "17b"):
        animate = load_config("animate.py", variant)
        assert dict(animate.mesh) == dict(data=1, fsdp=-1, context=1, tensor=1)
        assert animate.dtype == "bfloat16"
