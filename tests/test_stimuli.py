"""The stimulus-set stage on real models and real photos (CPU, small: 2 photos, 4 PGD steps).

One set is built per test session and shared; tests that modify a set work on a copy.
Sets are built with one torch thread, since floating-point results (and so the pixels)
depend on the thread count, and the torchrun test compares against this set byte for byte.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import stimuli
from advbias.cli import main as cli_main
from advbias.manifest import COLUMNS as MANIFEST_COLUMNS
from advbias.setdir import atomic_write_bytes
from stimuli.files import png_chunks

ROOT = Path(__file__).resolve().parents[1]

SET_ARGS = dict(
    images="builtin",
    pairs=[("cat", "truck")],
    eps=[2, 16],
    steps=4,
    limit=2,
    batch_size=4,  # 4 attack items = 1 photo per work unit: 2 units, so torchrun has one per rank
    controls=("flip", "noise"),
    holdout=["lite1"],
    seed=0,
)
CLI_ARGS = [
    "stimuli", "generate", "--images", "builtin", "--pairs", "cat:truck", "--eps", "2,16", "--steps", "4",
    "--limit", "2", "--batch-size", "4", "--controls", "flip,noise", "--holdout", "lite1", "--seed", "0",
]


@contextlib.contextmanager
def one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build(out: Path, **overrides) -> Path:
    """Build (or resume) a set; checks that the returned summary is what set.json records."""
    with one_thread():
        summary = stimuli.generate_set(**{**SET_ARGS, **overrides}, out=out, progress=False)
    meta = json.loads((summary.path / "set.json").read_text())
    assert summary.counts == meta["counts"] and summary.run == meta["run"] and Path(summary) == Path(out)
    return summary.path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet", PYTHONPATH=str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def read_manifest(setdir: Path) -> list[dict[str, str]]:
    with open(setdir / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "RGB"
        return np.asarray(img, dtype=np.int16)


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def set_files(setdir: Path) -> dict[str, str]:
    """The set's content: everything except set.json (whose timestamps and run log differ by design)."""
    return {k: v for k, v in tree_digest(setdir).items() if k not in ("set.json", "report.html")}


@pytest.fixture(scope="session")
def built_set(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("stimset") / "set")


@pytest.fixture()
def set_copy(built_set, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built_set, dst)
    return dst


# --------------------------------------------------------------------------- the files


def test_file_names_are_sha256_of_the_bytes(built_set):
    files = sorted((built_set / "images").iterdir())
    rows = read_manifest(built_set)
    assert len(files) == len(rows) == 22  # 2 photos x (1 clean + 2 budgets x (2 adversarial + 2 flip + 1 noise))
    for path in files:
        assert path.name == hashlib.sha256(path.read_bytes()).hexdigest() + ".png"
    assert {r["stimulus_id"] for r in rows} == {p.stem for p in files}
    assert all(r["file"] == f"images/{r['stimulus_id']}.png" for r in rows)


def test_pngs_carry_no_metadata(built_set):
    for path in (built_set / "images").iterdir():
        data = path.read_bytes()
        kinds = set(png_chunks(data))
        assert kinds == {b"IHDR", b"IDAT", b"IEND"}, path.name
        # Independently of our chunk parser: Pillow sees no text, gamma, ICC, dpi or EXIF.
        with Image.open(io.BytesIO(data)) as img:
            assert img.info == {}, (path.name, img.info)
            assert img.mode == "RGB" and img.size == (224, 224)
        assert b"tEXt" not in data and b"iTXt" not in data and b"zTXt" not in data


def test_budget_holds_to_the_level_on_every_file(built_set):
    rows = read_manifest(built_set)
    clean = {r["source_sha256"]: pixels(built_set / r["file"]) for r in rows if r["condition"] == "clean"}
    assert len(clean) == 2
    for r in rows:
        delta = np.abs(pixels(built_set / r["file"]) - clean[r["source_sha256"]])
        assert int(delta.max()) == int(r["linf"]) <= int(r["eps"]), r
        if r["condition"] in ("adversarial", "noise"):
            # PGD with 2.5*eps/steps steps and the sign noise both use the whole budget.
            assert int(r["linf"]) == int(r["eps"])


def test_controls_are_what_they_claim(built_set):
    rows = read_manifest(built_set)
    clean = {r["source_sha256"]: pixels(built_set / r["file"]) for r in rows if r["condition"] == "clean"}
    adv = {(r["pair_key"], r["target"]): r for r in rows if r["condition"] == "adversarial"}
    flips = [r for r in rows if r["condition"] == "flip"]
    assert len(flips) == 8
    for f in flips:
        base = clean[f["source_sha256"]]
        delta = pixels(built_set / adv[(f["pair_key"], f["target"])]["file"]) - base
        expected = np.clip(base + delta[::-1, :, :], 0, 255)  # perturbation turned upside down
        assert np.array_equal(pixels(built_set / f["file"]), expected)
    noises = [r for r in rows if r["condition"] == "noise"]
    assert len(noises) == 4
    for n in noises:
        base, eps = clean[n["source_sha256"]], int(n["eps"])
        delta = pixels(built_set / n["file"]) - base
        clipped = (base + eps > 255) | (base - eps < 0)
        assert np.all((np.abs(delta) == eps) | clipped)
        assert 0.4 < float((delta > 0).mean()) < 0.6  # random signs, not a constant shift


# --------------------------------------------------------------------------- the manifest


def test_manifest_columns_are_the_documented_ones(built_set):
    with open(built_set / "manifest.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == MANIFEST_COLUMNS
    required = {"stimulus_id", "source", "source_sha256", "condition", "target", "eps", "linf",
                "ensemble_target_prob", "ensemble_top1", "holdout_target_prob", "holdout_success", "pair_key"}
    assert required <= set(header)
    documented = set(re.findall(r"^\| `([a-z0-9_]+)`", (ROOT / "docs" / "manifest.md").read_text(), re.M))
    assert set(header) <= documented, set(header) - documented


def test_manifest_rows_describe_the_design(built_set):
    rows = read_manifest(built_set)
    assert [r["source"] for r in rows if r["condition"] == "clean"] == [
        "foolbox/imagenet_00_243.jpg", "foolbox/imagenet_01_559.jpg"]
    assert {r["source_label"] for r in rows} == {"243", "559"}
    for r in rows:
        if r["condition"] == "clean":
            assert (r["target"], r["pair"], r["eps"], r["pair_key"], r["ensemble_success"]) == ("", "", "0", "", "")
        else:
            assert r["pair"] == "cat:truck"
            assert r["pair_key"] == f"{r['source_sha256'][:16]}:cat:truck:{r['eps']}"
        assert r["steps"] == ("4" if r["condition"] == "adversarial" else "0")
    by_key: dict[str, list[str]] = {}
    for r in rows:
        if r["condition"] == "adversarial":
            by_key.setdefault(r["pair_key"], []).append(r["target"])
    assert len(by_key) == 4 and all(sorted(v) == ["cat", "truck"] for v in by_key.values())
    # The attack raises the target's probability far above the same perturbation flipped upside down.
    flip = {(r["pair_key"], r["target"]): float(r["ensemble_target_prob"]) for r in rows if r["condition"] == "flip"}
    for r in rows:
        if r["condition"] == "adversarial":
            assert float(r["ensemble_target_prob"]) > flip[(r["pair_key"], r["target"])]
    # Rows are sorted: by source, clean first, then pair, budget, condition, target.
    assert rows == sorted(rows, key=lambda r: (r["source"], r["condition"] != "clean", r["pair"], int(r["eps"]),
                                                ["clean", "adversarial", "flip", "noise"].index(r["condition"]),
                                                r["target"]))


def test_probabilities_are_measured_on_the_saved_files(built_set):
    """Recompute a few manifest numbers with the real models on the PNGs as saved."""
    import torch

    import attacks

    rows = [r for r in read_manifest(built_set) if r["condition"] in ("adversarial", "clean")]
    x = torch.from_numpy(np.stack([pixels(built_set / r["file"]) for r in rows]).astype(np.uint8)).permute(0, 3, 1, 2)
    for models, col, top in ((["lite0"], "ensemble_target_prob", "ensemble_top1"),
                             (["lite1"], "holdout_target_prob", "holdout_top1")):
        model = attacks.load_ensemble(models)
        with torch.no_grad():
            probs = torch.softmax(model(x.float() / 255), dim=1).double()
        for r, p in zip(rows, probs):
            assert int(r[top]) == int(p.argmax())
            if r["target"]:
                cls = attacks.resolve_target(r["target"])
                assert abs(float(r[col]) - float(p[cls].sum())) < 2e-4
                success = "ensemble_success" if col.startswith("ensemble") else "holdout_success"
                assert r[success] == str(int(int(p.argmax()) in cls))


def test_set_json_describes_the_set(built_set):
    meta = json.loads((built_set / "set.json").read_text())
    p = meta["parameters"]
    assert p["pairs"] == ["cat:truck"] and p["eps"] == [2, 16] and p["steps"] == 4 and p["seed"] == 0
    assert p["models"] == ["lite0"] and p["holdout"] == ["lite1"] and p["controls"] == ["flip", "noise"]
    assert [m["name"] for m in meta["models"]] == ["lite0"]
    assert re.fullmatch(r"[0-9a-f]{64}", meta["models"][0]["weights_sha256"])
    assert [m["name"] for m in meta["holdout_models"]] == ["lite1"]
    assert meta["counts"] == {"stimuli": 22, "sources": 2, "clean": 2, "adversarial": 8, "flip": 8, "noise": 4,
                              "phase": 0, "pair_keys": 4, "model_sets": 1}
    # --models alone: one model set named after its models, and the parameters of a set without model sets
    assert "model_sets" not in p and [s["name"] for s in meta["model_sets"]] == ["lite0"]
    assert {r["model_set"] for r in read_manifest(built_set)} == {"", "lite0"}
    assert {"torch", "numpy", "pillow", "python"} <= set(meta["versions"])
    assert meta["started_at"] and meta["finished_at"] and meta["run"]["units_computed"] == 2
    # No timestamps in the manifest: only set.json may differ between identical builds.
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:", (built_set / "manifest.csv").read_text())


# --------------------------------------------------------------------------- resume, refusal, determinism


def test_second_run_does_no_work(set_copy, monkeypatch):
    import attacks

    def no_model_work(*args, **kwargs):
        raise AssertionError("a finished set must not load models or attack again")

    monkeypatch.setattr(attacks, "load_ensemble", no_model_work)
    monkeypatch.setattr(attacks, "linf_pgd", no_model_work)
    before = set_files(set_copy)
    mtimes = {p: p.stat().st_mtime_ns for p in (set_copy / "images").iterdir()}
    build(set_copy)
    assert set_files(set_copy) == before
    assert {p: p.stat().st_mtime_ns for p in (set_copy / "images").iterdir()} == mtimes
    run = json.loads((set_copy / "set.json").read_text())["run"]
    assert (run["units_computed"], run["units_reused"]) == (0, 2)


def test_interrupted_run_resumes_only_the_missing_unit(set_copy, built_set):
    # Simulate a crash after the first unit: the second unit's journal, images and the manifest are gone.
    second = set_copy / "units" / "unit-000001.csv"
    for row in csv.DictReader(open(second)):
        (set_copy / row["file"]).unlink()
    second.unlink()
    (set_copy / "manifest.csv").unlink()
    (set_copy / "images" / ".leftover.png.x.tmp").write_bytes(b"half a file")
    build(set_copy)
    run = json.loads((set_copy / "set.json").read_text())["run"]
    assert (run["units_computed"], run["units_reused"]) == (1, 1)
    assert set_files(set_copy) == set_files(built_set)


def test_changed_parameters_are_refused(set_copy, capsys):
    before = tree_digest(set_copy)
    with pytest.raises(ValueError, match=r"other parameters \(eps 2,16 -> 2,8\)"):
        build(set_copy, eps=[2, 8])
    argv = [a if a != "2,16" else "2,8" for a in CLI_ARGS] + ["--out", str(set_copy), "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advbias: error:") and "other parameters" in err[0]
    assert cli_main([*CLI_ARGS[:-2], "--seed", "1", "--out", str(set_copy), "--no-progress"]) == 2
    assert "seed 0 -> 1" in capsys.readouterr().err
    assert tree_digest(set_copy) == before


def test_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no stimulus set"):
        build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_rebuild_is_byte_identical_and_shows_progress(built_set, tmp_path):
    out = tmp_path / "again"
    result = subprocess.run([sys.executable, "-m", "advbias", *CLI_ARGS, "--out", str(out)],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "img/s" in result.stderr or "s/img" in result.stderr  # the tqdm bar's rate
    assert "22 stimuli from 2 photos" in result.stdout
    assert set_files(out) == set_files(built_set)
    a, b = (json.loads((d / "set.json").read_text()) for d in (built_set, out))
    for meta in (a, b):
        for key in ("started_at", "finished_at", "run"):
            meta.pop(key)
    assert a == b


@pytest.mark.torchrun
def test_torchrun_two_processes_equal_one(built_set, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "advbias", *CLI_ARGS, "--out", str(out), "--no-progress"]
    result = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((out / "set.json").read_text())
    assert meta["run"]["world_size"] == 2 and meta["run"]["units_computed"] == 2
    assert set_files(out) == set_files(built_set)
    assert (out / "manifest.csv").read_bytes() == (built_set / "manifest.csv").read_bytes()


# --------------------------------------------------------------------------- verify


def test_verify_passes_on_a_fresh_set(built_set, capsys):
    result = stimuli.verify_set(built_set)
    assert result.ok, result.problems
    assert result.files == 22
    assert cli_main(["stimuli", "verify", str(built_set)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_catches_a_tampered_file(set_copy, capsys):
    rows = read_manifest(set_copy)
    target = next(r for r in rows if r["condition"] == "adversarial")
    path = set_copy / target["file"]
    px = pixels(path).astype(np.uint8)
    px[0, 0, 0] ^= 1  # one level in one pixel
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    assert cli_main(["stimuli", "verify", str(set_copy)]) == 1
    err = capsys.readouterr().err
    assert f"{target['file']}: sha256 is" in err
    assert "1 problem(s)" in err


def test_verify_catches_metadata_budget_and_manifest_violations(set_copy):
    from PIL import PngImagePlugin

    rows = read_manifest(set_copy)
    clean = next(r for r in rows if r["condition"] == "clean")
    adv = [r for r in rows if r["condition"] == "adversarial" and r["eps"] == "2"]
    # 1. a text chunk, file renamed to its new hash so that only the metadata is wrong
    info = PngImagePlugin.PngInfo()
    info.add_text("target", adv[0]["target"])
    buf = io.BytesIO()
    Image.fromarray(pixels(set_copy / adv[0]["file"]).astype(np.uint8)).save(buf, format="PNG", pnginfo=info)
    # 2. a perturbation of 3 levels in an eps-2 image, also consistently renamed
    over = pixels(set_copy / clean["file"])
    over[10, 10, 1] = over[10, 10, 1] + 3 if over[10, 10, 1] < 250 else over[10, 10, 1] - 3
    buf2 = io.BytesIO()
    Image.fromarray(over.astype(np.uint8)).save(buf2, format="PNG")
    for row, data in ((adv[0], buf.getvalue()), (adv[1], buf2.getvalue())):
        (set_copy / row["file"]).unlink()
        sid = hashlib.sha256(data).hexdigest()
        (set_copy / "images" / f"{sid}.png").write_bytes(data)
        row["stimulus_id"], row["file"] = sid, f"images/{sid}.png"
    # 3. a wrong linf in the manifest, and 4. a stray file
    rows[-1]["linf"] = "1"
    (set_copy / "images" / ("0" * 64 + ".png")).write_bytes(b"")
    with open(set_copy / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    problems = "\n".join(stimuli.verify_set(set_copy).problems)
    assert "metadata chunks tEXt" in problems
    assert "perturbation of 3 levels exceeds its budget eps 2" in problems
    assert "linf is 1 but the file differs from its clean crop by" in problems
    assert "not listed in the manifest" in problems


def test_verify_lists_every_broken_manifest_row_and_set_json_field(set_copy, capsys):
    """The manifest's own rules (read by its owner) become listed problems, not one exception."""
    rows = read_manifest(set_copy)
    rows[1]["condition"] = "blurred"
    rows[2]["file"] = "images/elsewhere.png"
    rows[3]["stimulus_id"], rows[3]["file"] = rows[4]["stimulus_id"], rows[4]["file"]
    with open(set_copy / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    problems = stimuli.verify_set(set_copy).problems
    text = "\n".join(problems)
    assert "line 3: condition 'blurred' is not one of" in text
    assert "line 4: file 'images/elsewhere.png' should be images/" in text
    assert f"stimulus_id {rows[4]['stimulus_id']} appears twice" in text
    assert cli_main(["stimuli", "verify", str(set_copy)]) == 1
    capsys.readouterr()
    meta = json.loads((set_copy / "set.json").read_text())
    meta["parameters"]["eps"] = ["two"]
    (set_copy / "set.json").write_text(json.dumps(meta))
    assert cli_main(["stimuli", "verify", str(set_copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set.json: parameters.eps must hold budgets 1..255, found 'two'" in err[0], err


# --------------------------------------------------------------------------- report


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_shows_rates_and_gallery(set_copy, capsys):
    assert cli_main(["stimuli", "report", str(set_copy)]) == 0
    page = (set_copy / "report.html").read_text()
    parsed = _Collector()
    parsed.feed(page)
    rows = read_manifest(set_copy)
    for eps in ("2", "16"):
        adv = [r for r in rows if r["condition"] == "adversarial" and r["eps"] == eps]
        rate = 100 * sum(int(r["ensemble_success"]) for r in adv) / len(adv)
        transfer = 100 * sum(int(r["holdout_success"]) for r in adv) / len(adv)
        assert re.search(rf"<td class=l>cat:truck</td><td>{eps}</td><td>4</td><td>{rate:.1f}%</td>", page)
        assert f"{transfer:.1f}%" in page
    linked = [s for s in parsed.srcs if s.startswith("images/")]
    embedded = [s for s in parsed.srcs if s.startswith("data:image/jpeg;base64,")]
    assert {r["file"] for r in rows if r["condition"] in ("clean", "adversarial")} == set(linked)
    assert len(embedded) == 8  # one amplified perturbation per adversarial image
    assert all((set_copy / s).is_file() for s in linked)
    text = " ".join(parsed.text)
    assert "toward cat" in text and "toward truck" in text and "held-out P(cat)" in text
    assert "efficientnet-lite0" in page  # the weights file of the attacked model


# --------------------------------------------------------------------------- inputs


def test_builtin_photos_are_found_through_the_packages():
    from stimuli.sources import plan_sources

    sources, skipped, ignored = plan_sources("builtin")
    names = [s.name for s in sources]
    assert len([n for n in names if n.startswith("foolbox/")]) == 20
    assert "skimage/chelsea.png" in names and "skimage/coffee.png" in names and "skimage/camera.png" not in names
    assert names == sorted(names) and not skipped and ignored == 0
    assert next(s for s in sources if s.name == "foolbox/imagenet_07_609.jpg").label == 609
    assert all(s.path.parent.name == "data" and s.path.parent.parent.name in ("foolbox", "skimage") for s in sources)


def test_folder_input_lists_unreadable_files(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    from stimuli.sources import builtin_candidates

    cat = next(p for n, p, _ in builtin_candidates() if n == "skimage/chelsea.png")
    Image.open(cat).convert("RGB").save(photos / "sub" / "b_cat.jpg", quality=90)
    shutil.copy(cat, photos / "a_cat.png")
    shutil.copy(cat, photos / "c_same_cat.png")  # byte-identical duplicate
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "readme.txt").write_text("not an image")
    out = tmp_path / "set"
    argv = ["stimuli", "generate", "--images", str(photos), "--pairs", "cat:truck", "--eps", "4", "--steps", "1",
            "--size", "64", "--no-progress", "--out", str(out)]
    with one_thread():
        assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "skipped broken.jpg: unreadable" in err and "skipped c_same_cat.png: duplicate of a_cat.png" in err
    meta = json.loads((out / "set.json").read_text())
    assert [s["name"] for s in meta["sources"]["skipped"]] == ["broken.jpg", "c_same_cat.png"]
    assert meta["sources"]["ignored_non_images"] == 1
    rows = read_manifest(out)
    assert sorted({r["source"] for r in rows}) == ["a_cat.png", "sub/b_cat.jpg"]
    assert stimuli.verify_set(out).ok


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--images": "{tmp}/missing"}, "image folder not found"),
        ({"--images": "{tmp}/empty"}, "no JPEG or PNG images found"),
        ({"--images": "{tmp}/junk"}, "none of the 1 image files"),
        ({"--pairs": "cat:unicorn"}, "--pairs: unknown target 'unicorn'"),
        ({"--pairs": "cat:cat"}, "A and B must differ"),
        ({"--pairs": "cat"}, "is not of the form A:B"),
        ({"--eps": "0,2"}, "--eps: 0 is outside 1..255"),
        ({"--eps": "256"}, "--eps: 256 is outside 1..255"),
        ({"--eps": "two"}, "is not a whole number"),
        ({"--controls": "blur"}, "unknown control 'blur'"),
        ({"--holdout": "lite0"}, "also attacked"),
        ({"--models": "lite9"}, "unknown model 'lite9'"),
        ({"--steps": "0"}, "--steps must be at least 1"),
        ({"--finish-steps": "5"}, "--finish-steps must lie in 0..steps (1)"),
        ({"--cfm-prob": "2"}, "--cfm-prob must lie in [0, 1]"),
        ({"--step-ratio": "fast"}, "--step-ratio must be a number"),
        ({"--limit": "few"}, "--limit must be a whole number"),
        ({"--size": "8"}, "--size must be at least 16"),
        ({"--batch-size": "-4"}, "--batch-size must be 'auto' or a positive whole number"),
        ({"--device": "tpu"}, "--device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, change, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.jpg").write_bytes(b"nope")
    opts = {"--images": "builtin", "--pairs": "cat:truck", "--eps": "2", "--steps": "1", "--limit": "1"}
    opts.update({k: v.format(tmp=tmp_path) for k, v in change.items()})
    out = tmp_path / "out"
    argv = ["stimuli", "generate", *[x for kv in opts.items() for x in kv], "--no-progress", "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advbias: error: ") and message in err[0], err
    assert not out.exists()


def test_verify_and_report_of_a_missing_set_are_one_line(tmp_path, capsys):
    for command in ("verify", "report"):
        assert cli_main(["stimuli", command, str(tmp_path / "nothing")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("advbias: error: ")
    assert not (tmp_path / "nothing").exists()


def test_report_of_a_set_with_a_broken_image_is_one_line(set_copy, capsys):
    """A damaged image in the user's set is their error (one line naming the file), not a crash."""
    clean = next(r for r in read_manifest(set_copy) if r["condition"] == "clean")
    (set_copy / clean["file"]).write_bytes(b"GIF89a not a png at all")
    assert cli_main(["stimuli", "report", str(set_copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advbias: error: "), err
    assert clean["file"] in err[0] and "advbias stimuli verify" in err[0]


def test_cli_module_does_not_import_torch():
    code = "import sys, stimuli.cli, stimuli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "manifest.csv"
    atomic_write_bytes(path, b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]  # no temporary file left behind
