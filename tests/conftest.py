"""Shared pytest fixtures: where the third-party data lives, and skipping when it is absent."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Compiled XLA programs are cached on disk for the whole session (subprocesses included):
# tests that rebuild the same tiny model recompile nothing.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mtvjax-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MTVJAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"third-party data not found at {path} (set MTVJAX_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` next to the repository; skips the test when it is absent."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def mtvcrafter_sample(shared_data) -> Path:
    """The NLF motion sample released with MTVCrafter (3 clips, videos, mean/std)."""
    return _require(shared_data / "mtvcrafter_sample")


@pytest.fixture(scope="session")
def cmu_bvh(shared_data) -> Path:
    """24 CMU motion-capture BVH files retargeted to a CC_Base rig."""
    return _require(shared_data / "cmu_bvh")



def load_config(path: str, variant: str):
    """`get_config(variant)` of a file under configs/."""
    from mtvjax.config import load_config as load
    return load(f"{REPO_ROOT / 'configs' / path}:{variant}")


def override(config, overrides: dict):
    """Sets `{"section.name": value}` entries on `config`; returns it."""
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def logged_losses(workdir) -> dict:
    """`{step: loss}` of the metrics a training run logged in `workdir`."""
    from mtvjax.train.metric_writer import read_metrics
    return {step: row["loss"] for step, row in read_metrics(str(workdir)).items()}


@pytest.fixture(scope="session")
def animate_inputs(tmp_path_factory):
    """A reference image (90 × 70 px), a 60-frame procedural motion and a broken image file."""
    import numpy as np
    from PIL import Image
    from mtvjax.data.synthetic_motion import SyntheticMotionSource
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 70, 3)) * 255).astype(np.uint8)).save(folder / "ref.png")
    np.save(folder / "motion.npy", SyntheticMotionSource(1, (60, 60), seed=3)[0].motion)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def simulated_devices_env(count: int, flags: str = "", **extra) -> dict:
    """The environment of a subprocess with `count` simulated CPU devices. It does not use the
    session's persistent compilation cache: XLA:CPU executables with collectives loaded from
    that cache can deadlock (devices reach their collectives in different orders and the
    rendezvous times out; seen with jax 0.10.2 on a warm cache)."""
    import os
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count} {flags}"
               .strip(), JAX_ENABLE_COMPILATION_CACHE="false")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script_on_eight_devices(path: str, timeout: int = 1200):
    """Runs test file `path` as a script on 8 simulated CPU devices (LLVM -O0: the programs
    compile ~2x faster and run once) and returns the JSON of its last output line."""
    import json
    import os
    import subprocess
    import sys
    env = simulated_devices_env(8, "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.abspath(path)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))
    return results
