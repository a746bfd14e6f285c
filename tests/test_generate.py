"""`mtvjax generate`: batch generation over a 6-entry benchmark list with tiny random checkpoint
sets of both families (CPU) — every clip and its ground truth written in the eval_video layout,
same seed → same frames, reruns regenerate only what is missing, a SIGKILLed run finishes on
rerun, the evaluation writes the paper's table, and two processes split the list."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from animate_helpers import WINDOW, write_random_sets
from conftest import REPO_ROOT, load_config
from mtvjax.data.synthetic_motion import SyntheticMotionSource
from mtvjax.sample import reference_image as RI
from mtvjax.sample.benchmark_entries import check_entries, read_entries
from mtvjax.sample.generate import generate
from mtvjax.viz.skeleton_video import read_video_frames, write_video

CONFIG = f"{REPO_ROOT / 'configs' / 'generate.py'}"
IDS = ["a", "a_again", "b", "c", "d", "e"]
ENTRIES = [  # a_again repeats a (same seed); b and d take their reference from the video
    {"id": "a", "reference": "ref.png", "motion": "m1.npy", "video": "v1"},
    {"id": "a_again", "reference": "ref.png", "motion": "m1.npy", "video": "v1"},
    {"id": "b", "motion": "m2.npy", "video": "v2.mp4"},
    {"id": "c", "reference": "wide.jpg", "motion": "m1.npy", "video": "v1", "start": 10,
     "seed": 7},
    {"id": "d", "motion": "m2.npy", "video": "v2.mp4", "start": 20, "seed": 3},
    {"id": "e", "reference": "ref.png", "motion": "m1.npy", "video": "v2.mp4", "clip": 0,
     "seed": 11},
]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_random_sets(tmp_path_factory.mktemp("sets"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Motions, references, a frame-folder video (frame k is grey level 4k) and an mp4, and
    list.jsonl with the six entries."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 70, 3)) * 255).astype(np.uint8)).save(root / "ref.png")
    Image.fromarray((rng.random((70, 110, 3)) * 255).astype(np.uint8)).save(root / "wide.jpg")
    for i, seed in ((1, 3), (2, 4)):
        np.save(root / f"m{i}.npy", SyntheticMotionSource(1, (60, 60), seed=seed)[0].motion)
    (root / "v1").mkdir()
    for k in range(60):
        Image.fromarray(np.full((80, 96, 3), 4 * k, np.uint8)).save(root / "v1" / f"{k}.png")
    y, x = np.mgrid[0:100, 0:100]     # its bucket at base 128: 128 x 128
    write_video(np.stack([np.stack([(x + 3 * k) % 256, y * 2, np.full_like(x, 128)], -1)
                          .astype(np.uint8) for k in range(60)]), root / "v2.mp4", 20.0)
    (root / "list.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ENTRIES))
    return root


def _config(variant, checkpoint_set, bench, out, **fields):
    config = load_config("generate.py", f"tiny,{variant}")
    for name in ("mvdit", "tokenizer", "vae", "clip"):
        if name in checkpoint_set:
            config.checkpoints[name] = checkpoint_set[name]
    if "prompt_embeddings" in checkpoint_set:
        config.prompt_embeddings = checkpoint_set["prompt_embeddings"]
    config.entries, config.out = str(bench / "list.jsonl"), str(out)
    for path, value in fields.items():
        node = config
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _frames(folder):
    return np.stack([np.asarray(Image.open(folder / f)) for f in sorted(os.listdir(folder))])


def _complete(out, ids, suffix=""):
    for i in ids:
        record = json.loads((out / "generated" / f"{i}.json").read_text())
        assert record["complete"] and record["frames"] == WINDOW, i
        assert (out / "generated" / f"{i}{suffix}").exists() and (out / "ground_truth" / i).is_dir()
    leftovers = [p for d in ("generated", "ground_truth") for p in os.listdir(out / d)
                 if p.startswith(".")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def out7b(sets, bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("out7b")
    report = generate(_config("7b", sets["7b"], bench, out), progress=False)
    return out, report


@pytest.fixture(scope="module")
def out17b(sets, bench, tmp_path_factory):
    """The 17B at its aspect buckets (base 128): entries of one reference share a shape."""
    out = tmp_path_factory.mktemp("out17b")
    config = _config("17b", sets["17b"], bench, out, video__resolution=(0, 0),
                     video__bucket_base=128)
    return out, generate(config, progress=False)


def test_entries_from_jsonl_csv_and_a_benchmark_folder(bench, tmp_path):
    jsonl = read_entries(bench / "list.jsonl")
    csv = tmp_path / "list.csv"
    csv.write_text("id,reference,motion,video,clip,start,seed\n"
                   + "".join(f"{e['id']},{e.get('reference', '')},{e['motion']},{e['video']},"
                             f"{e.get('clip', '')},{e.get('start', '')},{e.get('seed', '')}\n"
                             for e in ENTRIES))
    for e in read_entries(csv):    # relative paths are relative to the list file
        assert e.motion == str(tmp_path / os.path.relpath(e.motion, tmp_path))
    assert [(e.id, e.start, e.seed, e.reference is None) for e in jsonl] == [
        (e["id"], e.get("start"), e.get("seed"), "reference" not in e) for e in ENTRIES]
    check_entries(jsonl)

    clip = tmp_path / "tiktok" / "00337"
    (clip / "images").mkdir(parents=True)
    (clip / "motion.npy").write_bytes((bench / "m1.npy").read_bytes())
    (clip / "prompt.txt").write_text("a dancer\n")
    [entry] = read_entries(tmp_path / "tiktok")
    assert (entry.id, entry.video, entry.prompt, entry.reference) == (
        "00337", str(clip / "images"), "a dancer", None)


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "motion": "m1.npy"}\n{"id": "a", "motion": "m2.npy"}',
     r"list.jsonl:2: id 'a' already used at .*list.jsonl:1"),
    ('{"id": "../x", "motion": "m1.npy"}', r"list.jsonl:1: id '../x' is not a safe file name"),
    ('{"id": "x", "motion": "absent.npy"}', r"list.jsonl:1: motion .*absent.npy not found"),
    ('{"id": "x", "motion": "m1.npy", "strat": 3}', r"list.jsonl:1: unknown field\(s\) strat"),
    ('{"id": "x", "motion": "m1.npy", "start": -2}', r"list.jsonl:1: start=-2 is not a non-neg"),
    ('{"id": "x", "motion": "m1.npy"', r"list.jsonl:1: not a JSON object"),
])
def test_bad_entries_name_the_file_and_line(bench, tmp_path, line, message):
    (tmp_path / "m1.npy").write_bytes((bench / "m1.npy").read_bytes())
    (tmp_path / "m2.npy").write_bytes((bench / "m1.npy").read_bytes())
    (tmp_path / "list.jsonl").write_text(line + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        check_entries(read_entries(tmp_path / "list.jsonl"))


def test_bad_entry_stops_before_any_model_loads(bench, tmp_path):
    (tmp_path / "list.jsonl").write_text(json.dumps(
        {"id": "late", "motion": str(bench / "m1.npy"), "video": str(bench / "v1"),
         "start": 50}) + "\n")
    config = _config("7b", {"mvdit": str(tmp_path / "no_such_checkpoint")}, bench,
                     tmp_path / "out", entries=str(tmp_path / "list.jsonl"))
    with pytest.raises(ValueError, match=r"list.jsonl:1: .*60 frames.*too short for 17 frames"):
        generate(config, progress=False)
    assert not (tmp_path / "out" / "generated").exists()


def test_17b_bucket_that_is_no_multiple_of_16_is_refused_up_front(sets, bench, tmp_path):
    Image.new("RGB", (80, 96)).save(tmp_path / "tall.png")        # its base-128 bucket: 136 x 112
    (tmp_path / "list.jsonl").write_text(json.dumps(
        {"id": "tall", "reference": str(tmp_path / "tall.png"), "motion": str(bench / "m1.npy")})
        + "\n")
    config = _config("17b", sets["17b"], bench, tmp_path / "out", video__resolution=(0, 0),
                     video__bucket_base=128, entries=str(tmp_path / "list.jsonl"))
    with pytest.raises(ValueError, match=r"list.jsonl:1: .*bucket .* is 136x112, not a multiple"):
        generate(config, progress=False)


def test_7b_writes_every_clip_and_its_ground_truth_deterministically(out7b, bench):
    out, report = out7b
    assert sorted(report["generated"]) == sorted(IDS) and report["skipped"] == []
    _complete(out, IDS)
    videos = {i: _frames(out / "generated" / i) for i in IDS}
    assert all(v.shape == (WINDOW, 64, 64, 3) for v in videos.values())
    np.testing.assert_array_equal(videos["a"], videos["a_again"])   # same config and seed
    assert np.abs(videos["a"].astype(int) - videos["e"].astype(int)).mean() > 1   # other seed
    # ground truth: the driving frames at the generated frames' source positions
    c_truth = _frames(out / "ground_truth" / "c")
    assert c_truth.shape == (WINDOW, 64, 64, 3)
    np.testing.assert_allclose(c_truth[:, 32, 32, 0], 4 * (10 + np.arange(WINDOW)), atol=1)
    # b had no reference: its first driving frame, fitted like the ground truth
    first = RI.fit_reference(read_video_frames(bench / "v2.mp4", 1)[0], (64, 64))
    np.testing.assert_array_equal(_frames(out / "ground_truth" / "b")[0], first)
    record = json.loads((out / "generated" / "c.json").read_text())
    assert record["seed"] == 7 and record["source_frames"][0] == 10.0
    assert set(record["checkpoints"]) == {"mvdit", "tokenizer", "vae"}
    assert len(record["checkpoints"]["mvdit"]["id"]) == 64 and record["seconds"]["total"] > 0


def test_rerun_regenerates_only_missing_outputs(out7b, sets, bench):
    out, _ = out7b
    shutil.rmtree(out / "generated" / "c")
    mtimes = {i: (out / "generated" / f"{i}.json").stat().st_mtime_ns for i in IDS}
    report = generate(_config("7b", sets["7b"], bench, out), progress=False)
    assert report["generated"] == ["c"] and sorted(report["skipped"]) == sorted(set(IDS) - {"c"})
    _complete(out, IDS)
    for i in set(IDS) - {"c"}:
        assert (out / "generated" / f"{i}.json").stat().st_mtime_ns == mtimes[i], i
    # other generation settings are refused, not mixed into the same folder
    with pytest.raises(ValueError, match="holds outputs of other generation settings"):
        generate(_config("7b", sets["7b"], bench, out, sampling__steps=3), progress=False)


def test_17b_groups_clips_by_bucket_shape(out17b):
    out, report = out17b
    assert sorted(report["generated"]) == sorted(IDS)
    _complete(out, IDS)
    shapes = {i: _frames(out / "generated" / i).shape for i in IDS}
    truths = {i: _frames(out / "ground_truth" / i).shape for i in IDS}
    assert shapes == truths
    assert shapes["a"] == shapes["a_again"] == shapes["e"] == (WINDOW, 144, 112, 3)
    assert shapes["c"][1] < shapes["c"][2]       # the wide reference's landscape bucket
    order = [shapes[i] for i in report["generated"]]   # same-shape clips run together
    assert len(set(order)) >= 2
    assert all(order.index(s) + order.count(s) - 1 == len(order) - 1 - order[::-1].index(s)
               for s in order)


def test_evaluation_writes_the_papers_table(out7b, out17b, sets, bench, tmp_path):
    from test_video_eval import write_tiny_feature_nets
    write_tiny_feature_nets(tmp_path / "weights")
    table = tmp_path / "results"
    for (out, _), variant, fields in ((out7b, "7b", {}),
                                      (out17b, "17b", {"video__resolution": (0, 0),
                                                       "video__bucket_base": 128})):
        config = _config(variant, sets[variant], bench, out, evaluate__enabled=True,
                         evaluate__table=str(table), **fields)
        config.evaluate.video.weights_root = str(tmp_path / "weights")
        report = generate(config, progress=False)
        assert report["generated"] == [] and len(report["skipped"]) == 6
        metrics = report["evaluation"]["metrics"]
        assert all(np.isfinite(metrics[m]) for m in ("ssim", "psnr", "lpips", "fid", "fvd",
                                                       "fid_vid")), metrics
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["family"] for r in rows] == ["cogvideox", "wan"]
    markdown = (tmp_path / "results.md").read_text().splitlines()
    assert markdown[0].split("|")[3:9] == [" SSIM ↑ ", " PSNR ↑ ", " LPIPS ↓ ", " FID ↓ ",
                                           " FID-VID ↓ ", " FVD ↓ "]
    assert len(markdown) == 4
    assert all(cell.strip() != "-" for line in markdown[2:] for cell in line.split("|")[3:9])


def _cli(config_flags, env=None):
    return subprocess.Popen([sys.executable, "-m", "mtvjax.cli", "generate", "--config",
                             f"{CONFIG}:tiny", "--noprogress", *config_flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _flags(checkpoint_set, bench, out):
    return checkpoint_set["flags"] + [f"--config.entries={bench / 'list.jsonl'}",
                                      f"--config.out={out}", "--config.output.generated=mp4"]


def test_sigkill_mid_run_then_rerun_completes(sets, bench, tmp_path):
    out = tmp_path / "out"
    proc = _cli(_flags(sets["7b"], bench, out))
    deadline = time.time() + 600
    while not list((out / "generated").glob("*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no entry finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = list((out / "generated").glob("*.json"))
    assert 1 <= len(finished) < len(IDS)
    rerun = _cli(_flags(sets["7b"], bench, out))
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert f"skipped {len(finished)} already complete" in stdout
    _complete(out, IDS, ".mp4")
    for i in IDS:
        assert read_video_frames(out / "generated" / f"{i}.mp4").shape == (WINDOW, 64, 64, 3)


@pytest.mark.multiprocess
def test_two_processes_split_the_list(sets, bench, tmp_path):
    out = tmp_path / "out"
    procs = [_cli(_flags(sets["7b"], bench, out),
                  env=dict(os.environ, MTVJAX_PROCESS_ID=str(i), MTVJAX_NUM_PROCESSES="2"))
             for i in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
    reports = [json.loads((out / f"generate_process{i}of2.json").read_text()) for i in range(2)]
    assert [sorted(r["generated"]) for r in reports] == [sorted(IDS[0::2]), sorted(IDS[1::2])]
    _complete(out, IDS, ".mp4")
