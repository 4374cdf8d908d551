"""Lightning predict path: two CPU processes (DDP over gloo) give the one-process embeddings;
resume from shards; bad-image policy. Uses a tiny random open_clip model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_karpathy import (TINY_NAME, CountingEncoder, corrupt, make_karpathy_fixture, register_tiny_config,
                               tiny_clip_encoder)

from nnn.cache import EmbeddingCache
from nnn.data.flickr30k import Flickr30k
from nnn.data.images import BadImageError
from nnn.embed import embed_dataset_split
from nnn.embed import lightning as embed_lightning
from nnn.embed.lightning import RANK_VARIABLES, is_global_zero

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
OPTS = dict(batch_size=3, shard_size=4, num_workers=0, progress=False)
pytestmark = pytest.mark.filterwarnings("ignore:.*treespec:FutureWarning")  # Lightning vs torch
ONE_CPU = dict(accelerator="cpu", devices=1, strategy="auto")

DDP_SCRIPT = """
import os
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import torch.distributed as dist
from fixtures_karpathy import CountingEncoder, tiny_clip_encoder
from nnn.cache import EmbeddingCache
from nnn.data.flickr30k import Flickr30k
from nnn.embed import embed_dataset_split

data, cache_root, cfg, out = sys.argv[1:5]
fail_rank = sys.argv[5] if len(sys.argv) > 5 else None  # this rank's encoder fails at once
rank_here = os.environ.get("LOCAL_RANK", "0")  # set for the processes Lightning starts
enc = CountingEncoder(tiny_clip_encoder(cfg).load(),
                      fail_after=0 if rank_here == fail_rank else None)
es = embed_dataset_split(enc, Flickr30k(data, on_bad_image="skip"),
                         "train", EmbeddingCache(cache_root), batch_size=3, shard_size=4,
                         num_workers=0, progress=False,
                         lightning=dict(accelerator="cpu", devices=2, strategy="ddp"))
rank = dist.get_rank()
np.savez(out + f".rank{{rank}}.npz", image=es.image, text=es.text, c2i=es.caption_to_image,
         bad=np.array(es.meta["bad_image_ids"]), world=dist.get_world_size(),
         captions=enc.captions, images=enc.images)
"""


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_clip_encoder(tmp_path_factory.mktemp("openclip_cfg")).load()


@pytest.fixture
def flickr(tmp_path):
    make_karpathy_fixture(tmp_path / "data", "flickr30k", n_train=13, n_val=2, n_test=3)
    return tmp_path / "data"


@pytest.mark.slow  # two fresh interpreters import torch, Lightning, open_clip: 20-30 s on 2 cores
def test_ddp_two_cpu_processes_match_one_process(flickr, tmp_path, encoder):
    ds = Flickr30k(flickr, on_bad_image="skip")
    corrupt(ds.split("train").image_paths[4], "garbage")  # 12 good of 13: uneven over 2 ranks
    script = tmp_path / "ddp_extract.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), str(flickr), str(tmp_path / "cache"),
                           str(tmp_path / "cfg"), str(out)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = embed_dataset_split(encoder, ds, "train", EmbeddingCache(tmp_path / "single"), **OPTS)
    for rank in (0, 1):  # every rank returns the merged result
        got = np.load(f"{out}.rank{rank}.npz")
        assert int(got["world"]) == 2
        np.testing.assert_allclose(got["image"], single.image, atol=1e-5)
        np.testing.assert_allclose(got["text"], single.text, atol=1e-5)
        np.testing.assert_array_equal(got["c2i"], single.caption_to_image)
        assert got["bad"].tolist() == single.meta["bad_image_ids"]
        assert single.meta["bad_image_ids"] == [ds.split("train").image_ids[4]]
    # the ranks shared the work: each encoded about half of the images and of the captions
    shares = [np.load(f"{out}.rank{rank}.npz") for rank in (0, 1)]
    n_captions = ds.split("train").n_captions
    assert [int(s["captions"]) for s in shares] == [n_captions // 2, n_captions - n_captions // 2]
    assert sum(int(s["images"]) for s in shares) == 12 and min(int(s["images"]) for s in shares)
    assert not any((tmp_path / "cache" / ".work").iterdir())  # shards removed after the merge


@pytest.mark.slow  # two fresh interpreters, as above
def test_ddp_encoder_failure_on_one_rank_stops_both_ranks(flickr, tmp_path):
    """Rank 1's encoder raises on its first batch: rank 1 ends with that error, rank 0 with one
    naming another rank, both at once (before, rank 0 waited at the next collective call until
    the process group's timeout)."""
    script = tmp_path / "ddp_extract.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS)))
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    proc = subprocess.run([sys.executable, str(script), str(flickr), str(tmp_path / "cache"),
                           str(tmp_path / "cfg"), str(tmp_path / "out"), "1"],
                          capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONWARNINGS": "ignore"}, cwd=tmp_path)
    assert proc.returncode != 0
    assert "RuntimeError: injected crash" in proc.stderr, proc.stderr[-3000:]
    assert "another rank failed to encode its share of the images or captions" in proc.stderr
    assert not list(tmp_path.glob("out.rank*.npz"))


def test_lightning_resumes_shards_of_a_crashed_run(flickr, tmp_path, encoder):
    ds = Flickr30k(flickr)
    cache = EmbeddingCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="injected crash"):  # one process, shard 0 written
        embed_dataset_split(CountingEncoder(encoder, fail_after=2), ds, "train", cache, **OPTS)
    resumed = CountingEncoder(encoder)
    es = embed_dataset_split(resumed, ds, "train", cache, lightning=ONE_CPU, **OPTS)
    assert resumed.images == 13 - 4
    fresh = embed_dataset_split(encoder, ds, "train", EmbeddingCache(tmp_path / "fresh"), **OPTS)
    np.testing.assert_allclose(es.image, fresh.image, atol=1e-6)
    np.testing.assert_array_equal(es.caption_to_image, fresh.caption_to_image)
    again = CountingEncoder(encoder)  # a cache hit: the Trainer is not even built
    embed_dataset_split(again, ds, "train", cache, lightning=ONE_CPU, **OPTS)
    assert again.images == 0 and again.batches == 0


def test_lightning_bad_image_error(flickr, tmp_path, encoder):
    ds = Flickr30k(flickr)
    split = ds.split("test")
    corrupt(split.image_paths[1], "truncate")
    with pytest.raises(BadImageError, match=split.image_ids[1]):
        embed_dataset_split(encoder, ds, "test", EmbeddingCache(tmp_path / "c"),
                            lightning=ONE_CPU, **OPTS)


# -- ranks > 0 stop after the extraction ---------------------------------------------------------
def _tiny_run_overrides(data, tmp_path) -> list[str]:
    """A raw-image run with the tiny open_clip model (random weights) on the fixture data."""
    config_dir = tmp_path / "open_clip_cfg"
    register_tiny_config(config_dir)
    return ["dataset=flickr30k", "model=open_clip", f"model.model_name={TINY_NAME}",
            "model.pretrained=null", f"model.model_config_dir={config_dir}", "device=cpu",
            "logger=none", "method.k=2", "reference.fraction=0.5",
            "eval.n_boot=20", "extract.num_workers=0", "extract.progress=false",
            f"paths.data_root={data}", f"paths.cache_dir={tmp_path / 'cache'}"]


def test_is_global_zero_reads_the_launchers_variables(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert is_global_zero()  # a process on its own
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_global_zero()  # Lightning's launcher, rank 0
    for name, value in [("LOCAL_RANK", "1"), ("NODE_RANK", "1"), ("RANK", "3"),
                        ("SLURM_PROCID", "2")]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert not is_global_zero(), name
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        is_global_zero()


def test_rank_above_zero_extracts_then_stops(flickr, tmp_path, monkeypatch):
    """A re-run command on rank 1 (here: every split already cached, so no Trainer is needed)
    returns after the extraction: no results, plots or logger."""
    from nnn.pipeline import run
    from nnn.settings import compose

    overrides = _tiny_run_overrides(flickr, tmp_path)
    first = run(compose(overrides), output_dir=tmp_path / "rank0")  # fills the cache
    assert first["status"] == "completed" and (tmp_path / "rank0" / "results.json").is_file()
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(embed_lightning.L, "Trainer",
                        lambda *a, **k: pytest.fail("a cache hit built a Trainer"))
    cfg = compose([*overrides, "extract=ddp", "extract.lightning.accelerator=cpu",
                   "extract.lightning.devices=2", "extract.num_workers=0",
                   "extract.progress=false"])
    out = tmp_path / "rank1"
    assert run(cfg, output_dir=out) == {"status": "extraction rank", "objective": None}
    assert not out.exists()


def _run_py_ddp(overrides: list[str], run_dir: Path) -> dict:
    """``run.py`` with ``overrides`` and ``extract=ddp`` in a fresh interpreter free of launcher
    rank variables; its results.json once it succeeded."""
    cmd = [sys.executable, "run.py", *overrides, "extract=ddp", "extract.progress=false",
           f"hydra.run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow  # two interpreters import torch, Lightning, open_clip, Hydra: ~30 s on 2 cores
def test_run_py_with_two_ddp_processes_writes_results_once(flickr, tmp_path):
    run_dir = tmp_path / "run"
    results = _run_py_ddp([*_tiny_run_overrides(flickr, tmp_path),
                           "extract.lightning.accelerator=cpu", "extract.lightning.devices=2",
                           "extract.num_workers=0"], run_dir)
    assert results["status"] == "completed" and results["data"]["test_images"] == 3
    rank1 = (run_dir / "train_ddp_process_1.log").read_text()
    assert "DDP extraction rank done" in rank1 and "results in" not in rank1
    assert "results in" in (run_dir / "run.log").read_text()


def test_lightning_loads_the_encoder_once_for_several_splits(flickr, tmp_path):
    ds, cache = Flickr30k(flickr), EmbeddingCache(tmp_path / "cache")
    enc = CountingEncoder(tiny_clip_encoder(tmp_path / "cfg"))
    for name in ("test", "val", "train"):
        embed_dataset_split(enc, ds, name, cache, lightning=ONE_CPU, **OPTS)
    assert enc.loads == 1 and enc.images == 3 + 2 + 13


def test_lightning_refuses_a_device_that_runs_another_precision_than_the_key(flickr, tmp_path):
    """fp16 configured for a GPU, but the Trainer's device is the CPU (where fp16 runs as fp32):
    storing those embeddings under the fp16 key would be wrong."""
    enc = tiny_clip_encoder(tmp_path / "cfg")
    enc.precision = "fp16"
    split = Flickr30k(flickr).split("test")
    with pytest.raises(ValueError, match=r"precision=fp16, but .* runs as fp32: configure"):
        embed_lightning.embed_split_lightning(enc, split, EmbeddingCache(tmp_path / "c"),
                                              identity={"precision": "fp16", "t": 1},
                                              **ONE_CPU, **OPTS)
    assert not enc.is_loaded  # refused before the model was built


class _Trainer:
    """What ``_encode_caption_share`` reads of a Trainer, as rank ``rank`` of ``world``;
    ``others_ok``: whether the other ranks report success."""

    def __init__(self, rank, world, others_ok=True):
        from types import SimpleNamespace

        import torch

        self.world_size, self.global_rank, self.is_global_zero = world, rank, rank == 0
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"),
                                        reduce_boolean_decision=lambda ok, all: ok and others_ok)


def test_caption_shares_cover_the_split_once_and_resume(flickr, tmp_path, encoder):
    from nnn.embed.shards import ShardDir

    split = Flickr30k(flickr).split("train")
    n = split.n_captions
    shards = ShardDir(tmp_path / "work", split.n_images)
    enc = CountingEncoder(encoder)
    for rank in range(3):  # three ranks, one after the other
        embed_lightning._encode_caption_share(enc, split, shards, _Trainer(rank, 3),
                                              progress=False)
    assert enc.captions == n and len(list(shards.path.glob("text-*.npy"))) == 3
    np.testing.assert_allclose(shards.text(n), encoder.encode_texts(split.captions,
                                                                     progress=False), atol=1e-6)
    for rank in range(2):  # a rerun with another world size: only uncovered shares are encoded
        embed_lightning._encode_caption_share(enc, split, shards, _Trainer(rank, 2),
                                              progress=False)
    assert enc.captions == n


def test_a_failure_on_any_rank_stops_every_rank():
    ok, crash = _Trainer(0, 2), RuntimeError("injected crash")
    embed_lightning._all_ranks_succeeded(ok, None, "elsewhere")  # all well: returns
    with pytest.raises(RuntimeError, match="injected crash"):  # the rank that failed
        embed_lightning._all_ranks_succeeded(_Trainer(1, 2, others_ok=False), crash, "elsewhere")
    with pytest.raises(RuntimeError, match="^elsewhere$"):  # a rank that did not
        embed_lightning._all_ranks_succeeded(_Trainer(0, 2, others_ok=False), None, "elsewhere")


def test_an_encoder_failure_in_predict_is_raised_after_the_loop(flickr, tmp_path, encoder):
    """The failing rank passes over its later batches (their rows stay pending) and raises its
    error only at the collective check, where the other ranks hear of it."""
    ds, cache = Flickr30k(flickr), EmbeddingCache(tmp_path / "cache")
    failing = CountingEncoder(encoder, fail_after=2)
    with pytest.raises(RuntimeError, match="injected crash"):
        embed_dataset_split(failing, ds, "train", cache, lightning=ONE_CPU, **OPTS)
    assert failing.batches == 2 and failing.captions == 0  # no work after the failure
    resumed = CountingEncoder(encoder)
    embed_dataset_split(resumed, ds, "train", cache, lightning=ONE_CPU, **OPTS)
    assert resumed.images == 13 - 6  # the two batches done before the failure were kept


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_py_with_extract_ddp_on_one_gpu(flickr, tmp_path):
    """``run.py ... extract=ddp`` with Lightning on the GPU (one device, fp16): the Hydra runner's
    DDP extraction end to end, results once. Run by benchmarks/gpu_check.py."""
    overrides = [o for o in _tiny_run_overrides(flickr, tmp_path) if not o.startswith("device=")]
    results = _run_py_ddp([*overrides, "device=cuda", "model.precision=fp16",
                           "extract.lightning.devices=1", "extract.num_workers=2"],
                          tmp_path / "run")
    assert results["status"] == "completed" and results["data"]["test_images"] == 3
    assert results["config"]["extract"]["lightning"]["accelerator"] == "gpu"


def test_ddp_precision_the_key_would_not_name_is_refused_before_any_data(monkeypatch):
    """The ranks' precision check, made by check_config already: accelerator=cpu with fp16 keyed
    on a GPU, and the other way round; matching devices, or fp32, pass."""
    from nnn.settings import check_config, compose

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as configs see
    base = ["model=clip", "dataset=coco", "extract=ddp", "logger=none"]
    for extra, words in ((["extract.lightning.accelerator=cpu", "model.precision=fp16"],
                          "accelerator=cpu runs model.precision=fp16 as fp32"),
                         (["device=cpu", "model.precision=fp16"],
                          "accelerator=gpu runs model.precision=fp16 as fp16")):
        with pytest.raises(ValueError, match=words + r".* set device=\w+ to match"):
            check_config(compose([*base, *extra]))
    for extra in (["model.precision=fp16"], ["extract.lightning.accelerator=cpu", "device=cpu",
                                             "model.precision=fp16"],
                  ["extract.lightning.accelerator=cpu"]):
        check_config(compose([*base, *extra]))
