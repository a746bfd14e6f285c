"""Every command on bad inputs: one line naming the file or key, non-zero exit, no traceback
(unless `--verbose`); `--help` lists the command's own flags. Failures happen before compiling."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import torch_reference_4dmot as ref
from conftest import REPO_ROOT
from mtvjax.checkpoint.conversion import ConversionError, TensorSource
from mtvjax.commands.checkpoint_dir import checkpoint_dir
from mtvjax.commands.results import non_finite_numbers
from mtvjax.config import check_train_config, load_config
from mtvjax.data.motion_files import MotionFormatError, validate_motion
from mtvjax.errors import EXIT_DATA, EXIT_USAGE, ConfigError, classify

CONFIGS = REPO_ROOT / "configs"
TOKENIZER = f"{CONFIGS / '4dmot.py'}:tiny"


def _run(*args, module="mtvjax.cli"):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("MTVJAX_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    np.save(root / "corrupt.npy", np.zeros((5, 3), np.float32))          # not [frames, 24, 3]
    far = np.zeros((60, 24, 3), np.float32)
    far[10, 3, 1] = 1e7                                                   # finite but absurd
    np.save(root / "far.npy", far)
    (root / "motions").mkdir()
    np.save(root / "motions" / "corrupt.npy", np.zeros((5, 3), np.float32))
    (root / "a_file").write_text("not a folder")
    model = ref.Reference4DMoT(channels=(32, 64), code_dim=64, codebook_size=256,
                               num_res_blocks=1, num_groups=8, dilation_reference=128)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    weights["encoder.conv_in.weight"][0, 0, 0, 0] = float("nan")
    torch.save(weights, root / "nan.pt")
    np.save(root / "mean.npy", np.zeros((24, 3), np.float32))
    np.save(root / "std.npy", np.ones((24, 3), np.float32))
    return root


def _case(inputs, name):
    i = inputs
    return {
        "train unknown key": (["train", "--config", TOKENIZER, "--workdir", i / "w",
                               "--config.train.nosuch=1"], EXIT_USAGE, "nosuch"),
        "train wrong type": (["train", "--config", TOKENIZER, "--workdir", i / "w",
                              "--config.data.batch_size=many"], EXIT_USAGE, "data.batch_size"),
        "train batch_size 0": (["train", "--config", TOKENIZER, "--workdir", i / "w",
                                "--config.data.batch_size=0"], EXIT_USAGE, "data.batch_size"),
        "train checkpoint_every 0": (["train", "--config", TOKENIZER, "--workdir", i / "w",
                                      "--config.train.checkpoint_every=0"], EXIT_USAGE,
                                     "train.checkpoint_every"),
        "train workdir is a file": (["train", "--config", TOKENIZER, "--workdir", i / "a_file"],
                                    EXIT_DATA, "a_file"),
        "train corrupt motion": (["train", "--config", TOKENIZER, "--workdir", i / "w",
                                  f"--config.data.path={i / 'motions'}"], EXIT_DATA,
                                 "motions/corrupt.npy"),
        "train missing config": (["train", "--config", i / "nosuch.py:tiny", "--workdir", i / "w"],
                                 EXIT_USAGE, "nosuch.py"),
        "tokenize missing file": (["tokenize", "--checkpoint", i, "--motion", i / "nothere.npy",
                                   "--out", i / "t.npz"], EXIT_DATA, "nothere.npy"),
        "tokenize absurd motion": (["tokenize", "--checkpoint", i, "--motion", i / "far.npy",
                                    "--out", i / "t.npz"], EXIT_DATA, "far.npy"),
        "eval missing checkpoint": (["eval", "--config", f"{CONFIGS / 'eval_4dmot.py'}:synthetic",
                                     f"--config.checkpoint={i / 'nockpt'}"], EXIT_DATA, "nockpt"),
        "viz corrupt motion": (["viz", "motion", "--motion", i / "corrupt.npy", "--out",
                                i / "v.mp4"], EXIT_DATA, "corrupt.npy"),
        "animate bad resolution": (["animate", "--config", f"{CONFIGS / 'animate.py'}:7b",
                                    "--ref-image", i / "r.png", "--motion", i / "far.npy",
                                    "--out", i / "o.mp4", "--resolution", "big"], EXIT_USAGE,
                                   "--resolution"),
        "animate unknown attention": (["animate", "--config", f"{CONFIGS / 'animate.py'}:17b",
                                       "--ref-image", i / "r.png", "--motion", i / "far.npy",
                                       "--out", i / "o.mp4", "--config.model.attention=flash"],
                                      EXIT_USAGE, "model.attention"),
        "convert NaN weights": (["convert", "4dmot", f"--src={i / 'nan.pt'}", f"--dst={i / 'c'}",
                                 f"--mean={i / 'mean.npy'}", f"--std={i / 'std.npy'}",
                                 "--variant=tiny"], EXIT_DATA, "encoder.conv_in.weight"),
    }[name]


CASES = ["train unknown key", "train wrong type", "train batch_size 0", "train checkpoint_every 0",
         "train workdir is a file", "train corrupt motion", "train missing config",
         "tokenize missing file", "tokenize absurd motion", "eval missing checkpoint",
         "viz corrupt motion", "animate bad resolution", "animate unknown attention",
         "convert NaN weights"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line(inputs, name):
    args, code, named = _case(inputs, name)
    out = _run(*args)
    text = out.stdout + out.stderr
    assert out.returncode == code, text[-3000:]
    assert "Traceback" not in text and named in out.stderr, text[-3000:]
    assert len(out.stderr.strip().splitlines()) <= 2, out.stderr


def test_verbose_shows_the_traceback(inputs):
    args, code, named = _case(inputs, "train batch_size 0")
    out = _run(*args, "--verbose")
    assert out.returncode == code and "Traceback" in out.stderr and named in out.stderr


@pytest.mark.parametrize("module,args,named", [
    ("data_pipeline.build", ["--config", "nosuch.py"], "nosuch.py"),
    ("data_pipeline.latents", ["--config", f"{CONFIGS / 'data' / 'synthetic_latents.py'}:tiny",
                               "--config.nosuch=1"], "nosuch"),
    ("mtvjax.tools.ablate", ["--config", f"{CONFIGS / 'ablate.py'}:smoke",
                             "--config.nosuch=1"], "nosuch"),
])
def test_module_entry_points(module, args, named):
    out = _run(*args, module=module)
    assert out.returncode == EXIT_USAGE and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert named in out.stderr


@pytest.mark.parametrize("command,flags", [
    (["train"], ["--config", "--workdir", "--verbose"]),
    (["convert"], ["--src", "--dst", "--source_format", "MODEL"]),
    (["tokenize"], ["--checkpoint", "--motion", "--batch_size"]),
])
def test_help_lists_the_commands_flags(command, flags):
    out = _run(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert all(f in out.stdout for f in flags), out.stdout
    assert "--helpfull" not in out.stdout and "--jax_" not in out.stdout


# ----------------------------------------------------------------------------------------------
# The pieces, in process
# ----------------------------------------------------------------------------------------------


def test_classify_expected_and_bugs():
    assert classify(OSError(errno.ENOSPC, "No space left on device", "/full/x")) == EXIT_DATA
    assert classify(FileNotFoundError("x")) == EXIT_DATA
    assert classify(ConfigError("k")) == EXIT_USAGE
    assert classify(RuntimeError("bug")) is None
    try:
        np.zeros(3).reshape(2, 2)             # a ValueError raised by a library: a bug
    except ValueError as e:
        assert classify(e) is None
    try:
        validate_motion(np.zeros((2, 3)), "clip.npy")   # raised by the project: expected
    except MotionFormatError as e:
        assert classify(e) == EXIT_DATA


def test_train_config_checks(tmp_path):
    for key in ("data.batch_size", "train.checkpoint_every", "train.num_steps"):
        config = load_config(TOKENIZER)
        section, leaf = key.split(".")
        config[section][leaf] = 0
        with pytest.raises(ConfigError, match=key):
            check_train_config(config)
    np.save(tmp_path / "clip.npy", np.zeros((60, 24, 3), np.float32))
    config = load_config(TOKENIZER)
    config.data.path = str(tmp_path)                   # data.source still "synthetic"
    check_train_config(config)
    assert config.data.source == "files"
    video = load_config(f"{CONFIGS / 'mvdit.py'}:tiny")
    video.data.path = str(tmp_path / "clip.npy")       # not a latent dataset: refused
    with pytest.raises(ConfigError, match="data.source"):
        check_train_config(video)


def test_absurd_motion_is_refused():
    motion = np.zeros((4, 24, 3))
    motion[2, 5, 0] = 2e5
    with pytest.raises(MotionFormatError, match="clip.npy.*frame 2"):
        validate_motion(motion, "clip.npy")
    assert validate_motion(motion, "clip.npy", max_abs_mm=1e6).shape == (4, 24, 3)
    # the dataset build's reader applies the same bound
    from data_pipeline.readers.ingested_record import MotionRecord
    record = MotionRecord(motion=motion.astype(np.float32), source_id="clip.npy#0", fps=30.0)
    with pytest.raises(MotionFormatError, match="clip.npy#0.*beyond"):
        record.validate()


def test_nan_tensor_is_refused_by_name():
    source = TensorSource("w.pt", {"a": (2,), "b": (2,)},
                          {"a": lambda: np.ones(2), "b": lambda: np.array([1.0, np.inf])})
    assert source.get("a").tolist() == [1.0, 1.0]
    with pytest.raises(ConversionError, match="w.pt: tensor b has 1 NaN/Inf"):
        source.get("b")


def test_non_finite_results_are_found():
    report = {"sets": {"cmu": {"mpjpe_mm": float("nan"), "clips": 3}}, "x": [1.0, np.array([np.inf])]}
    assert non_finite_numbers(report) == ["sets.cmu.mpjpe_mm", "x.1"]
    assert non_finite_numbers({"a": 1.0, "b": np.zeros(2)}) == []


def test_workdir_as_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "6").mkdir(parents=True)
    assert checkpoint_dir(str(tmp_path)) == str(tmp_path / "checkpoints")
    assert checkpoint_dir(str(tmp_path / "checkpoints")) == str(tmp_path / "checkpoints")


def test_relative_video_path_is_joined_once(tmp_path, monkeypatch):
    from conftest import load_config
    from mtvjax.sample.driving import driving_motion
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "drive.mp4").write_bytes(b"")
    with open(tmp_path / "clips" / "m.pkl", "wb") as f:
        pickle.dump([{"pose": np.zeros((9, 24, 3), np.float32), "video_path": "drive.mp4"}], f)
    monkeypatch.chdir(tmp_path)
    drive = driving_motion("clips/m.pkl", 9, load_config("animate.py", "7b").motion, model_fps=20.0)
    assert os.path.isfile(drive.video_path), drive.video_path
