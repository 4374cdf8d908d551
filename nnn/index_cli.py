"""``nnn-index``: build, shard, merge, query and inspect saved NNN indexes (``nnn.index``).

::

    nnn-index refs   --refs R.npy --out REFS_DIR [--index flat|ivf|ivf_fp16]
    nnn-index build  --gallery G.npy --refs R.npy|REFS_DIR --out INDEX_DIR [--kind flat|ivf|hnsw]
    nnn-index shard  --gallery G.npy --refs R --shard I --num-shards N --out SHARDS_DIR
    nnn-index shards --gallery G.npy --refs R --num-shards N --out SHARDS_DIR --launcher joblib
    nnn-index merge  --shards SHARDS_DIR --gallery G.npy --out INDEX_DIR [--biases-out B.npy]
    nnn-index query  --index INDEX_DIR --queries Q.npy [--top-k 10] [--out RESULT.npz] [--recall]
    nnn-index info   --index INDEX_DIR [--verify]

Galleries are ``.npy`` (memory-mapped) or ``.safetensors`` files, read ``--chunk-rows`` rows at
a time; references and queries any file ``load_array`` reads, or (``--refs``) a saved
``ReferenceIndex`` folder. ``shards`` runs ``shard`` for every shard as the jobs of a Hydra
multirun (``conf/index_shards.yaml``) on a Hydra launcher: ``basic`` (one after another),
``joblib`` (parallel processes), ``submitit_local`` or ``submitit_slurm`` (SLURM jobs; extra
``hydra.launcher.*`` overrides after ``--``); the same app runs directly as ``python -m
nnn.index_cli hydra-shards -m gallery=... refs=... out=... num_shards=N 'shard=range(0,N)'``.

Outputs are written atomically; an existing output is refused unless ``--overwrite`` (then it
is replaced once the new one is complete). A user error (bad input, a missing or corrupt file,
other references than claimed) prints one line ``Error: ...`` and exits 1, as ``run.py`` does;
``--debug`` or ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from nnn._index_io import (DEFAULT_ALIGN, DEFAULT_CHUNK_ROWS, DEFAULT_EF_SEARCH, DEFAULT_HNSW_M,
                           DEFAULT_NPROBE, KINDS, META_FILE)
from nnn.config_dir import CONFIG_DIR
from nnn.errors import MissingResourceError, full_error

log = logging.getLogger("nnn.index_cli")
#: the Hydra app of one shard job (conf/index_shards.yaml)
SHARD_CONFIG = "index_shards"
LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm")


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, (ValueError, OSError, MissingResourceError))


# -- inputs ------------------------------------------------------------------------------------
def load_refs(path):
    """``path`` as references: a saved ``ReferenceIndex`` folder, else an (n_r, d) array file."""
    from nnn.data.precomputed import load_array
    from nnn.methods import ReferenceIndex

    if Path(path).is_dir():
        return ReferenceIndex.load(path, use_gpu_faiss=False)
    return load_array(path, "references", expected="(n_refs, d) float embeddings", ndim=2,
                      kinds="f")


def _set_threads(threads: int | None) -> None:
    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def _ref_options(args) -> dict:
    """``BiasMaker``'s top-k options over the references, from the command line's (or a shard
    job config's) ``backend``, ``ref_index`` and ``ref_nprobe``: a saved ``ReferenceIndex``
    folder is searched by FAISS whatever ``backend`` says, with its own index kind, so only
    ``ref_nprobe`` applies to it."""
    if Path(args.refs).is_dir():
        return {"nprobe": args.ref_nprobe}
    return {"index": args.ref_index, "nprobe": args.ref_nprobe} if args.backend == "faiss" else {}


def _index_options(args) -> dict:
    return dict(kind=args.kind, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                ef_search=args.ef_search, align=args.align, chunk_rows=args.chunk_rows,
                use_gpu=args.gpu, progress=not args.quiet)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# -- commands ----------------------------------------------------------------------------------
def cmd_refs(args) -> None:
    from nnn.methods import ReferenceIndex

    refs = load_refs(args.refs)
    index = ReferenceIndex(refs, index=args.index, nlist=args.nlist, use_gpu_faiss=False,
                           normalize=args.normalize)
    index.save(args.out, overwrite=args.overwrite)
    _print_json({"saved": str(args.out), "index": index.index, "nlist": index.nlist,
                 "n_refs": index.n_refs, "dim": index.dim, "refs_digest": index.digest})


def cmd_build(args) -> None:
    from nnn._index_io import refuse_existing
    from nnn.index import INDEX_KIND, NNNIndex

    refuse_existing(Path(args.out), args.overwrite, "NNN index", INDEX_KIND)  # before the work
    refs = load_refs(args.refs)
    t0 = time.perf_counter()
    index = NNNIndex.build(args.gallery, refs, k=args.k, alpha=args.alpha,
                           normalize=args.normalize, backend=args.backend,
                           ref_options=_ref_options(args), **_index_options(args))
    built = time.perf_counter() - t0
    index.save(args.out, overwrite=args.overwrite)
    _print_json({"saved": str(args.out), "kind": index.kind, "n_items": index.n_items,
                 "seconds": round(built, 3), "items_per_s": round(index.n_items / built, 1)})


def cmd_shard(args) -> None:
    from nnn.index import compute_shard

    path = compute_shard(args.gallery, load_refs(args.refs), shard=args.shard,
                         num_shards=args.num_shards, out=args.out, k=args.k, alpha=args.alpha,
                         normalize=args.normalize, backend=args.backend,
                         chunk_rows=args.chunk_rows, overwrite=args.overwrite,
                         progress=not args.quiet, **_ref_options(args))
    print(path)


def _override(key: str, value) -> str:
    """``key=value`` for Hydra's override grammar (strings quoted)."""
    if isinstance(value, (str, Path)):
        text = str(value)
        if "'" in text or "\\" in text:
            raise ValueError(f"{key}={text!r}: paths with quotes or backslashes cannot be passed "
                             "to Hydra; rename or link the file")
        return f"{key}='{text}'"
    return f"{key}={'null' if value is None else value}"


def shard_overrides(args) -> list[str]:
    """The Hydra multirun command line of ``shards``: one job per shard on ``args.launcher``."""
    n = args.num_shards
    values = {"gallery": Path(args.gallery).resolve(), "refs": Path(args.refs).resolve(),
              "out": Path(args.out).resolve(), "num_shards": n, "k": args.k, "alpha": args.alpha,
              "backend": args.backend, "ref_index": args.ref_index, "ref_nprobe": args.ref_nprobe,
              "chunk_rows": args.chunk_rows, "normalize": args.normalize,
              "overwrite": args.overwrite, "threads": args.threads, "progress": not args.quiet}
    out = ["-m", f"shard=range(0,{n})", f"hydra/launcher={args.launcher}"]
    if args.launcher == "joblib":
        out.append(f"hydra.launcher.n_jobs={args.jobs}")
    return out + [_override(key, value) for key, value in values.items()] + args.hydra


def cmd_shards(args) -> None:
    from nnn.data.rows import as_rows
    from nnn.index import BiasMaker, read_shards

    argv = sys.argv
    sys.argv = [argv[0], *shard_overrides(args)]
    # Hydra sets up logging for its run (handlers on the streams of the moment); they are
    # removed afterwards, so that a caller of main() (a notebook, a test) keeps its own
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        shard_app()
    except SystemExit as stop:  # Hydra exits this way after an error it reported
        if stop.code not in (None, 0):
            raise ValueError(f"the Hydra multirun of the shard jobs failed (exit {stop.code}); "
                             "see its message above") from None
    finally:
        sys.argv = argv
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    try:
        shards = read_shards(args.out, num_shards=args.num_shards)
    except (ValueError, OSError) as err:
        raise ValueError(f"{err} (the jobs' logs: {Path(args.out) / 'logs'})") from None
    # a job refuses to replace a shard made another way and the old set may still be whole:
    # check that the set is the one asked for
    want = BiasMaker(load_refs(args.refs), k=args.k, alpha=args.alpha, backend=args.backend,
                     normalize=args.normalize, **_ref_options(args)).provenance
    made = {"provenance": shards[0]["provenance"], "gallery_shape": shards[0]["gallery_shape"]}
    asked = {"provenance": json.loads(json.dumps(want)),
             "gallery_shape": list(as_rows(args.gallery).shape)}
    if made != asked:
        raise ValueError(f"the shards in {str(args.out)!r} were made with {made}, not {asked}; "
                         f"the jobs kept them (their logs: {Path(args.out) / 'logs'}): use "
                         "another --out, or --overwrite")
    _print_json({"shards": len(shards), "out": str(args.out),
                 "seconds": [s["seconds"] for s in shards]})


def cmd_merge(args) -> None:
    from nnn.index import merge_shards

    if args.out is None and args.biases_out is None and args.folded_out is None:
        raise ValueError("merge needs --out (the index), --biases-out or --folded-out")
    refs = None if args.refs is None else load_refs(args.refs)
    t0 = time.perf_counter()
    index = merge_shards(args.shards, args.gallery, index_out=args.out,
                         biases_out=args.biases_out, folded_out=args.folded_out,
                         overwrite=args.overwrite, expected_refs=refs,
                         inputs=[args.refs] if args.refs else [], **_index_options(args))
    seconds = time.perf_counter() - t0
    _print_json({"saved": [str(p) for p in (args.out, args.biases_out, args.folded_out) if p],
                 "n_items": None if index is None else index.n_items,
                 "seconds": round(seconds, 3)})


def _is_results_file(path: Path) -> bool:
    """Whether ``path`` is a plain file written by ``query --out``: a NumPy .npz archive (a
    zip file) holding ``scores`` and ``ids``."""
    import zipfile

    if path.is_symlink() or not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return {"scores.npy", "ids.npy"} <= set(z.namelist())


def cmd_query(args) -> None:
    import numpy as np

    from nnn._atomic import atomic_open
    from nnn.data.precomputed import load_array
    from nnn.index import NNNIndex

    expected = None if args.refs is None else load_refs(args.refs)
    index = NNNIndex.load(args.index, expected_refs=expected, verify=args.verify,
                          use_gpu=args.gpu)
    index.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    queries = load_array(args.queries, "queries", expected="(n_queries, d) float embeddings",
                         ndim=2, kinds="f")
    out = None if args.out is None else Path(args.out)
    if out is not None and out.exists():
        if not args.overwrite:
            raise FileExistsError(f"{str(out)!r} already exists; pass --overwrite or choose "
                                  "another path")
        if not _is_results_file(out):
            raise FileExistsError(f"{str(out)!r} exists and is not a results file of query; "
                                  "--overwrite replaces only those, so it was left untouched; "
                                  "choose another path")
    t0 = time.perf_counter()
    scores, ids = index.search(queries, args.top_k)
    seconds = time.perf_counter() - t0
    summary = {"queries": len(queries), "top_k": args.top_k, "kind": index.kind,
               "seconds": round(seconds, 4), "queries_per_s": round(len(queries) / seconds, 1),
               "first_ids": ids[0].tolist()}
    if args.recall:
        summary["recall_against_exact"] = index.recall_against_exact(queries, args.top_k)
    if args.out is not None:
        with atomic_open(args.out, "wb") as f:
            np.savez(f, scores=scores, ids=ids)
        summary["saved"] = str(args.out)
    _print_json(summary)


def cmd_info(args) -> None:
    from nnn.index import NNNIndex

    index = NNNIndex.load(args.index, verify=args.verify)
    meta = json.loads((Path(args.index) / META_FILE).read_text(encoding="utf-8"))
    _print_json({"index": str(args.index), "kind": index.kind, "n_items": index.n_items,
                 "dim": index.dim, "params": index.params, "provenance": index.provenance,
                 "gallery_digest": index.gallery_digest, "versions": meta.get("versions"),
                 "files": meta.get("files"), "verified": bool(args.verify)})


# -- the Hydra app of one shard job --------------------------------------------------------------
def _shard_job(cfg) -> float:
    """One shard (``cfg``: conf/index_shards.yaml); a shard already complete in ``cfg.out`` is
    kept unless ``cfg.overwrite``, so a rerun resumes. Returns 0.0; NaN for a job that failed
    with a user error inside a multirun (logged; the others go on, ``shards`` then names it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nnn.index import compute_shard

    _set_threads(cfg.threads)
    try:
        compute_shard(cfg.gallery, load_refs(cfg.refs), shard=cfg.shard,
                      num_shards=cfg.num_shards, out=cfg.out, k=cfg.k, alpha=cfg.alpha,
                      normalize=cfg.normalize, backend=cfg.backend, chunk_rows=cfg.chunk_rows,
                      overwrite=cfg.overwrite, progress=cfg.progress, **_ref_options(cfg))
    except FileExistsError:  # a rerun resumes: complete shards are kept (read_shards checks them)
        log.info("shard %s is already complete in %s; kept (overwrite=true recomputes it)",
                 cfg.shard, cfg.out)
    except Exception as err:
        if not _is_user_error(err) or full_error():
            raise
        message = str(err).replace("\n", " ")
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("shard %s failed: %s", cfg.shard, message)
            return math.nan
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(1)
    return 0.0


def shard_app():
    """Run ``_shard_job`` as a Hydra app over ``sys.argv`` (config conf/index_shards.yaml)."""
    import hydra

    if not (CONFIG_DIR / f"{SHARD_CONFIG}.yaml").is_file():
        raise MissingResourceError(f"the shard jobs' Hydra config {SHARD_CONFIG}.yaml is not in "
                                   f"{str(CONFIG_DIR)!r}: nnn-index shards runs from a source "
                                   "checkout (pip install -e .), like run.py; or run "
                                   "nnn-index shard --shard I for each shard")
    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR),
                      config_name=SHARD_CONFIG)(_shard_job)()


# -- the command line --------------------------------------------------------------------------
def _add_bias_options(p) -> None:
    p.add_argument("--gallery", required=True, help=".npy or .safetensors (n, d) file")
    p.add_argument("--refs", required=True,
                   help="reference queries: an (n_r, d) array file or a saved ReferenceIndex")
    p.add_argument("--k", type=int, default=16, help="NNN's k (default 16)")
    p.add_argument("--alpha", type=float, default=0.75, help="NNN's alpha (default 0.75)")
    p.add_argument("--backend", choices=("exact", "faiss"), default="exact",
                   help="top-k of an array of references (a ReferenceIndex is always faiss)")
    p.add_argument("--ref-index", choices=("flat", "ivf", "ivf_fp16"), default="flat",
                   help="--backend faiss: the index built over an array of references")
    p.add_argument("--ref-nprobe", type=int, default=None, help="IVF lists of the references")
    p.add_argument("--normalize", action="store_true", help="L2-normalise every embedding")
    p.add_argument("--threads", type=int, default=None, help="torch/FAISS threads per process")


def _add_index_options(p) -> None:
    p.add_argument("--kind", choices=KINDS, default="flat", help="flat (exact), ivf or hnsw")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4 sqrt(n))")
    p.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE, help="IVF lists searched")
    p.add_argument("--hnsw-m", type=int, default=DEFAULT_HNSW_M, help="HNSW links per item")
    p.add_argument("--ef-search", type=int, default=DEFAULT_EF_SEARCH, help="HNSW search beam")
    p.add_argument("--align", type=int, default=DEFAULT_ALIGN,
                   help="pad the folded rows [g, -b] with zeros to a multiple of this many "
                        "floats (default 1: exactly d + 1; 16: 64-byte rows)")
    p.add_argument("--gpu", action="store_true", help="search on GPU FAISS (flat, ivf)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="nnn-index", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build, shard, merge, query and inspect saved NNN indexes (nnn.index).",
        epilog="commands:\n" + __doc__.split("::\n\n")[1].split("\n\n")[0]
        + "\n\nREADME 'Serving NNN: a saved index' has a worked example.")
    top.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    top.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, func, text: str, *, out: bool = True, overwrite: bool = True):
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        if out:
            p.add_argument("--out", required=True, help="output path")
        if overwrite:
            p.add_argument("--overwrite", action="store_true",
                           help="replace an existing output once the new one is complete")
        return p

    p = command("refs", cmd_refs, "save a ReferenceIndex built from an array of references")
    p.add_argument("--refs", required=True, help="(n_r, d) array file")
    p.add_argument("--index", choices=("flat", "ivf", "ivf_fp16"), default="ivf")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--normalize", action="store_true")

    p = command("build", cmd_build, "compute biases and save the folded NNN index in one pass")
    _add_bias_options(p)
    _add_index_options(p)
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)

    for name, func, text in (("shard", cmd_shard, "compute the biases of one shard"),
                             ("shards", cmd_shards, "compute every shard as Hydra jobs")):
        p = command(name, func, text)
        _add_bias_options(p)
        p.add_argument("--num-shards", type=int, required=True)
        p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
        if name == "shard":
            p.add_argument("--shard", type=int, required=True, help="0 .. num_shards - 1")
        else:
            p.add_argument("--launcher", choices=LAUNCHERS, default="joblib")
            p.add_argument("--jobs", type=int, default=2, help="joblib: parallel processes")
            p.add_argument("hydra", nargs="*", default=[],
                           help="after --: more Hydra overrides, e.g. hydra.launcher.partition=X")

    p = command("merge", cmd_merge, "check a complete set of shards and save the index",
                out=False)
    p.add_argument("--out", default=None, help="the index folder")
    p.add_argument("--shards", required=True, help="the folder the shard jobs wrote")
    p.add_argument("--gallery", required=True, help="the gallery the shards were computed from")
    p.add_argument("--refs", default=None, help="refuse shards made from other references")
    p.add_argument("--biases-out", default=None, help="also save the (n,) biases as .npy")
    p.add_argument("--folded-out", default=None,
                   help="also write [g, -b] as a memory-mapped .npy (no RAM for the gallery)")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    _add_index_options(p)

    p = command("query", cmd_query, "search a saved index", out=False)
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True, help="(n_q, d) array file")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--out", default=None, help=".npz with scores and ids")
    p.add_argument("--refs", default=None, help="refuse an index made from other references")
    p.add_argument("--recall", action="store_true", help="also recall against exact search")
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--ef-search", type=int, default=None)
    p.add_argument("--verify", action="store_true", help="re-hash every file first")
    p.add_argument("--gpu", action="store_true")

    p = command("info", cmd_info, "describe a saved index", out=False, overwrite=False)
    p.add_argument("--index", required=True)
    p.add_argument("--verify", action="store_true", help="re-hash every file")
    return top


def main(argv: list[str] | None = None) -> int:
    """The ``nnn-index`` entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hydra-shards"]:  # the Hydra app itself: python -m nnn.index_cli hydra-shards
        sys.argv = [sys.argv[0], *argv[1:]]
        run, debug = (lambda: shard_app()), full_error()
    else:
        args = parser().parse_args(argv)
        run, debug = (lambda: args.func(args)), args.debug or full_error()
        if getattr(args, "threads", None):
            _set_threads(args.threads)
    try:
        run()
    except Exception as err:
        if debug or not _is_user_error(err):
            raise
        print(f"Error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
