"""``nnn-index``: build, query, info, shards through Hydra's launchers (basic in this process;
joblib and submitit_local in a fresh interpreter, as a user runs them) and merge; user errors
are one line and exit status 1, and nothing is overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnn.config_dir import CONFIG_DIR
from nnn.index import NNNIndex
from nnn.index_cli import main
from nnn.methods import NNN
from tests.conftest import unit_rows
from tests.tolerances import assert_topk_ids, dot_atol

D, K = 12, 7


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(5)
    for name, n in (("g", 1013), ("r", 301), ("q", 57)):
        np.save(tmp_path / f"{name}.npy", unit_rows(rng.standard_normal((n, D))))
    return tmp_path


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(["--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _summary(out: str) -> dict:
    """The JSON summary a command prints last (Hydra's log lines may come before it)."""
    return json.loads(out[out.rfind("\n{") + 1:])


def _one_line_error(capsys, *args) -> str:
    code, _, err = _run(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


def _check_merged(tmp, index_dir) -> None:
    g, r, q = (np.load(tmp / f"{n}.npy") for n in ("g", "r", "q"))
    model = NNN(k=K, alpha=0.75).fit(g, query_bank=r)
    index = NNNIndex.load(index_dir, expected_refs=r, verify=True)
    np.testing.assert_allclose(index.biases, model.bias_, rtol=0, atol=dot_atol(D))
    scale = np.sqrt(2) * np.sqrt(1 + model.bias_.max() ** 2)
    assert_topk_ids(index.search(q, 10)[1], model.score(q), atol=2 * dot_atol(D + 1, scale))


def test_build_query_info(files, capsys):
    t = files
    code, out, _ = _run(capsys, "build", "--gallery", t / "g.npy", "--refs", t / "r.npy",
                        "--out", t / "ix", "--k", K, "--chunk-rows", 100)
    assert code == 0 and _summary(out)["n_items"] == 1013
    _check_merged(t, t / "ix")
    code, out, _ = _run(capsys, "query", "--index", t / "ix", "--queries", t / "q.npy",
                        "--top-k", 5, "--out", t / "res.npz", "--refs", t / "r.npy", "--recall")
    summary = _summary(out)
    assert code == 0 and summary["recall_against_exact"] == 1.0 and summary["queries"] == 57
    with np.load(t / "res.npz") as res:
        np.testing.assert_array_equal(res["ids"], NNNIndex.load(t / "ix").search(
            np.load(t / "q.npy"), 5)[1])
    code, out, _ = _run(capsys, "info", "--index", t / "ix", "--verify")
    info = _summary(out)
    assert code == 0 and info["provenance"]["k"] == K and info["verified"]
    assert "faiss" in info["versions"] and "index.faiss" in info["files"]


def test_reference_index_folder_as_refs(files, capsys):
    t = files
    assert _run(capsys, "refs", "--refs", t / "r.npy", "--out", t / "ri", "--index", "flat")[0] == 0
    code, out, _ = _run(capsys, "build", "--gallery", t / "g.npy", "--refs", t / "ri",
                        "--out", t / "ix", "--k", K)
    assert code == 0
    _check_merged(t, t / "ix")
    assert NNNIndex.load(t / "ix").provenance["backend"] == "faiss"


def test_user_errors_are_one_line_and_overwrite_nothing(files, capsys):
    t = files
    _run(capsys, "build", "--gallery", t / "g.npy", "--refs", t / "r.npy", "--out", t / "ix",
         "--k", K)
    before = (t / "ix" / "index.faiss").read_bytes()
    assert "already exists" in _one_line_error(
        capsys, "build", "--gallery", t / "g.npy", "--refs", t / "q.npy", "--out", t / "ix")
    assert (t / "ix" / "index.faiss").read_bytes() == before
    np.save(t / "q8.npy", unit_rows(np.ones((3, 8))))
    assert "queries has dimension 8" in _one_line_error(
        capsys, "query", "--index", t / "ix", "--queries", t / "q8.npy")
    assert "other references" in _one_line_error(
        capsys, "query", "--index", t / "ix", "--queries", t / "q.npy", "--refs", t / "q.npy")
    assert "has dimension 8 but the references have dimension 12" in _one_line_error(
        capsys, "build", "--gallery", t / "q8.npy", "--refs", t / "r.npy", "--out", t / "ix8")
    (t / "bad").mkdir()
    (t / "bad" / "meta.json").write_text("{not json")
    assert "meta.json' is truncated or corrupt" in _one_line_error(
        capsys, "info", "--index", t / "bad")
    assert "lacks" not in _one_line_error(
        capsys, "merge", "--shards", t / "nowhere", "--gallery", t / "g.npy", "--out", t / "m")
    with pytest.raises(ValueError):  # --debug: the traceback instead
        main(["--debug", "info", "--index", str(t / "bad")])


def test_overwrite_replaces_only_what_nnn_wrote(files, capsys):
    """--overwrite replaces a saved index of the same kind or a results/array file of ours;
    an input, a foreign folder or another kind of index is refused and left as it was."""
    t = files
    gallery = (t / "g.npy").read_bytes()
    (t / "notes").mkdir()
    (t / "notes" / "keep.txt").write_text("mine")
    common = ("--gallery", t / "g.npy", "--refs", t / "r.npy", "--k", K, "--overwrite")
    for target in ("g.npy", "notes"):
        message = _one_line_error(capsys, "build", *common, "--out", t / target)
        assert "left untouched" in message and "choose another path" in message
    assert _run(capsys, "build", *common, "--out", t / "ix")[0] == 0
    assert _run(capsys, "build", *common, "--out", t / "ix", "--kind", "hnsw")[0] == 0
    assert NNNIndex.load(t / "ix").kind == "hnsw"
    assert "saved 'nnn_index'" in _one_line_error(
        capsys, "refs", "--refs", t / "r.npy", "--out", t / "ix", "--overwrite")
    assert "left untouched" in _one_line_error(
        capsys, "query", "--index", t / "ix", "--queries", t / "q.npy", "--out", t / "g.npy",
        "--overwrite")
    assert _run(capsys, "shards", "--gallery", t / "g.npy", "--refs", t / "r.npy", "--num-shards",
                2, "--out", t / "sh", "--k", K, "--launcher", "basic")[0] == 0
    merge = ("merge", "--shards", t / "sh", "--gallery", t / "g.npy", "--refs", t / "r.npy")
    refs = (t / "r.npy").read_bytes()
    for flag in ("--biases-out", "--folded-out"):  # an input, a shard file: never replaced
        for target in (t / "g.npy", t / "r.npy", t / "sh" / "shard-00000-of-00002.npy"):
            assert "one of merge's inputs or outputs" in _one_line_error(
                capsys, *merge, flag, target, "--overwrite")
    assert "one of merge's inputs or outputs" in _one_line_error(  # two outputs, one file
        capsys, *merge, "--biases-out", t / "x.npy", "--folded-out", t / "x.npy")
    assert "one of merge's inputs or outputs" in _one_line_error(
        capsys, *merge, "--out", t / "ix2", "--biases-out", t / "ix2")
    assert not (t / "x.npy").exists() and not (t / "ix2").exists()
    assert (t / "r.npy").read_bytes() == refs
    (t / "link").symlink_to(t / "ix")
    assert "a symbolic link" in _one_line_error(capsys, "build", *common, "--out", t / "link")
    os.mkfifo(t / "fifo")  # a FIFO is refused at once (reading it to check would block)
    assert "left untouched" in _one_line_error(capsys, *merge, "--biases-out", t / "fifo",
                                               "--overwrite")
    assert (t / "g.npy").read_bytes() == gallery
    assert (t / "notes" / "keep.txt").read_text() == "mine"
    assert NNNIndex.load(t / "ix").kind == "hnsw"


def test_build_with_the_faiss_backend_over_ivf_references(files, capsys):
    """The references' IVF options (--ref-index, --ref-nprobe) and the index's own (--nprobe)
    are kept apart."""
    t = files
    code, out, _ = _run(capsys, "build", "--gallery", t / "g.npy", "--refs", t / "r.npy",
                        "--out", t / "ix", "--k", K, "--backend", "faiss", "--ref-index", "ivf",
                        "--ref-nprobe", 4, "--kind", "ivf", "--nprobe", 9)
    assert code == 0, out
    index = NNNIndex.load(t / "ix")
    assert index.provenance["backend"] == "faiss" and index.provenance["nprobe"] == 4
    assert index.params["nprobe"] == 9
    # a saved ReferenceIndex folder is searched by FAISS whatever --backend says: its nprobe
    assert _run(capsys, "refs", "--refs", t / "r.npy", "--out", t / "ri", "--index", "ivf",
                "--nlist", 6)[0] == 0
    assert _run(capsys, "build", "--gallery", t / "g.npy", "--refs", t / "ri", "--out",
                t / "ix2", "--k", K, "--ref-nprobe", 3)[0] == 0
    assert NNNIndex.load(t / "ix2").provenance["nprobe"] == 3


def test_query_overwrites_only_its_own_results(files, capsys):
    t = files
    _run(capsys, "build", "--gallery", t / "g.npy", "--refs", t / "r.npy", "--out", t / "ix",
         "--k", K)
    query = ("query", "--index", t / "ix", "--queries", t / "q.npy", "--overwrite", "--out")
    assert _run(capsys, *query, t / "res")[0] == 0  # no .npz suffix: still ours to replace
    assert _run(capsys, *query, t / "res")[0] == 0
    np.savez(t / "other.npz", a=np.ones(2))
    assert "not a results file of query" in _one_line_error(capsys, *query, t / "other.npz")


def test_shards_rerun_keeps_only_intact_shards_made_the_same_way(files, capsys):
    t = files
    args = ("shards", "--gallery", t / "g.npy", "--refs", t / "r.npy", "--num-shards", 3,
            "--out", t / "sh", "--launcher", "basic")
    assert _run(capsys, *args, "--k", K)[0] == 0
    records = sorted((t / "sh").glob("shard-*.json"))
    before = [r.read_bytes() for r in records]
    message = _one_line_error(capsys, *args, "--k", K + 1)  # other settings, same folder
    assert "use another --out, or --overwrite" in message
    assert [r.read_bytes() for r in records] == before
    record = json.loads(records[2].read_text())
    records[2].write_text(json.dumps({**record, "format": 99}))  # another format: redone
    damaged = t / "sh" / "shard-00001-of-00003.npy"
    damaged.write_bytes(damaged.read_bytes()[:-8])  # a truncated shard file is recomputed
    assert _run(capsys, *args, "--k", K)[0] == 0
    assert records[0].read_bytes() == before[0]
    assert json.loads(records[2].read_text())["format"] == 1
    assert _run(capsys, "merge", "--shards", t / "sh", "--gallery", t / "g.npy", "--out",
                t / "ix", "--refs", t / "r.npy")[0] == 0
    _check_merged(t, t / "ix")
    assert _run(capsys, *args, "--k", K + 1, "--overwrite")[0] == 0
    assert json.loads(records[0].read_text())["provenance"]["k"] == K + 1


def test_shards_on_hydras_basic_launcher_then_merge(files, capsys):
    t = files
    code, out, _ = _run(capsys, "shards", "--gallery", t / "g.npy", "--refs", t / "r.npy",
                        "--num-shards", 3, "--out", t / "sh", "--k", K, "--launcher", "basic")
    assert code == 0 and _summary(out)["shards"] == 3
    assert sorted(p.name for p in (t / "sh").glob("shard-*.json")) == [
        f"shard-0000{i}-of-00003.json" for i in range(3)]
    code, out, _ = _run(capsys, "merge", "--shards", t / "sh", "--gallery", t / "g.npy",
                        "--out", t / "ix", "--refs", t / "r.npy", "--biases-out", t / "b.npy")
    assert code == 0
    _check_merged(t, t / "ix")
    kept = (t / "sh" / "shard-00000-of-00003.json").stat().st_mtime_ns
    (t / "sh" / "shard-00001-of-00003.json").unlink()  # a lost shard: the rerun redoes only it
    code, out, _ = _run(capsys, "shards", "--gallery", t / "g.npy", "--refs", t / "r.npy",
                        "--num-shards", 3, "--out", t / "sh", "--k", K, "--launcher", "basic")
    assert code == 0 and (t / "sh" / "shard-00001-of-00003.json").is_file()
    assert (t / "sh" / "shard-00000-of-00003.json").stat().st_mtime_ns == kept
    (t / "sh" / "shard-00001-of-00003.json").unlink()
    assert "lacks 1 of 3 shards: [1]" in _one_line_error(
        capsys, "merge", "--shards", t / "sh", "--gallery", t / "g.npy", "--out", t / "ix2")


def test_a_failing_shard_job_is_named(files, capsys):
    t = files
    message = _one_line_error(capsys, "shards", "--gallery", t / "g.npy", "--refs", t / "r.npy",
                              "--num-shards", 3, "--out", t / "sh", "--k", 500,
                              "--launcher", "basic")
    assert "lacks 3 of 3 shards" in message or "no bias shards" in message


@pytest.mark.slow  # fresh interpreters and worker processes: ~8-15 s each on 2 busy cores
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_shards_on_parallel_launchers(files, launcher, capsys):
    t = files
    cmd = [sys.executable, "-m", "nnn.index_cli", "--quiet", "shards", "--gallery", t / "g.npy",
           "--refs", t / "r.npy", "--num-shards", 3, "--out", t / "sh", "--k", K,
           "--launcher", launcher, "--threads", 1]
    if launcher == "submitit_local":
        cmd += ["--", "hydra.launcher.timeout_min=5"]
    proc = subprocess.run([str(c) for c in cmd], cwd=CONFIG_DIR.parent, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["--quiet", "merge", "--shards", str(t / "sh"), "--gallery", str(t / "g.npy"),
                 "--out", str(t / "ix")]) == 0
    _check_merged(t, t / "ix")


@pytest.mark.parametrize("command", [[], ["build"], ["query"], ["shards"]])
def test_help_imports_no_torch_or_faiss(tmp_path, command):
    """``nnn-index [command] --help`` answers at once: the parser needs no torch or FAISS."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "nnn.index_cli", *command,
                           "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: nnn-index" in proc.stdout, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "numpy" in imported  # the check sees imports at all
    assert not imported & {"torch", "faiss", "hydra", "scipy"}, sorted(imported)
