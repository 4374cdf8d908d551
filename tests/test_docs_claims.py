"""What README.md and docs/*.md promise, kept true: the Layout, the commands, the library example.

- README's "Layout" block names every module of ``nnn/`` in the block of its layer (the numbers
  of ``LAYERS`` in ``tests/test_architecture.py``), every top-level folder of the checkout and
  every config group, and no file or folder that does not exist.
- README's group table lists exactly the options in ``conf/<group>/``.
- Every ``run.py`` command of README and docs/{baselines,data,lavis}.md composes (Hydra), and
  every ``nnn-index`` line of README's demo parses with the CLI's own parser; nothing is run.
- README's test command is ``.ci/run``'s, and its setup command is docs/install.md's.
- README's library example runs on small random data and does what its comments say.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from test_architecture import layer, modules

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
#: folders that are never listed: besides the git-ignored ones (.gitignore) and hidden ones (tool
#: caches) but .ci, the shared data, which lives beside a checkout ("shared/data beside the
#: checkout") but may be copied into one
UNLISTED = {"shared"}


def code_blocks(text: str, lang: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for kind, body in blocks if lang is None or kind == lang]


def layout() -> str:
    section = README.split("\n## Layout", 1)[1]
    return code_blocks(section)[0]


def layout_parts() -> tuple[dict[int, str], list[str], str]:
    """README's layout: ({layer: its lines under nnn/}, the top-level entries, the rest)."""
    layers: dict[int, str] = {}
    top, rest, current = [], [], None
    for line in layout().splitlines():
        if line and not line[0].isspace():
            top.append(line.split()[0])
            current = "nnn" if line.startswith("nnn/") else None
            if current is None:
                rest.append(line)
            continue
        if current == "nnn" and (m := re.match(r"^ (\d) \S", line)):
            current_layer = int(m.group(1))
            layers[current_layer] = ""
        if current == "nnn" and layers:
            layers[current_layer] += line + "\n"
        elif current is None:
            rest.append(line)
    return layers, top, "\n".join(rest)


def names_in(text: str) -> set[str]:
    """File names (x.py, x.sh, ...; globs like bench_*.py too) written in ``text``."""
    return set(re.findall(r"(?<![\w/.$-])([\w*]+\.(?:py|sh|csv|yaml|ipynb))\b", text))


def mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w/.]){re.escape(name)}(?![\w])", text) is not None


def test_layout_names_each_module_in_the_block_of_its_layer():
    layers, _, _ = layout_parts()
    assert sorted(layers) == list(range(10))
    wrong = []
    for name, path in modules().items():
        if name == "nnn":
            continue
        parts = name.split(".")[1:]
        top = parts[0] + ("/" if (REPO / "nnn" / parts[0]).is_dir() else ".py")
        block = layers[layer(name)]
        if not mentions(block, top):
            wrong.append(f"{top} is not named in layer {layer(name)}")
        elif len(parts) > 1 and path.name != "__init__.py" and not mentions(block, path.name):
            wrong.append(f"{name} ({path.name}) is not named beside {top}")
    assert wrong == [], "README's Layout: " + "; ".join(wrong)


def test_layout_names_no_file_that_does_not_exist():
    layers, top, rest = layout_parts()
    ghosts = [t for t in top if not (REPO / t).exists()]
    top_files = {t for t in top if (REPO / t).is_file()}
    in_nnn = {p.name for p in (REPO / "nnn").rglob("*") if p.is_file()} | top_files
    ghosts += sorted(n for block in layers.values() for n in names_in(block) if n not in in_nnn)
    listed = [p.name for t in top if t.endswith("/") and t != "nnn/" and (REPO / t).is_dir()
              for p in (REPO / t).rglob("*") if p.is_file()] + sorted(top_files)
    ghosts += sorted(n for n in names_in(rest)
                     if not any(fnmatch.fnmatch(name, n) for name in listed))
    assert ghosts == [], f"README's Layout names what does not exist: {ghosts}"


def test_layout_lists_every_top_level_folder():
    ignored = [line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith(("#", "!"))]
    folders = {p.name for p in REPO.iterdir() if p.is_dir() and p.name not in UNLISTED
               and (p.name == ".ci" or not p.name.startswith("."))
               and not any(fnmatch.fnmatch(p.name, pattern) for pattern in ignored)}
    _, top, _ = layout_parts()
    assert folders - {t.rstrip("/") for t in top} == set()


def test_layout_names_every_config_group():
    _, _, rest = layout_parts()
    conf = rest.split("conf/", 1)[1].split("\n\n", 1)[0]
    groups = {p.name for p in (REPO / "conf").iterdir() if p.is_dir()}
    missing = sorted(g for g in groups if not re.search(rf"\b{g}\b", conf))
    assert missing == []


def group_table() -> dict[str, set[str]]:
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| .*? \|$", README, flags=re.M)
    return {group: set(re.findall(r"(?:^|, )`(\w+)`", options)) for group, options in rows}


def test_readme_group_table_lists_the_options_of_conf():
    table = group_table()
    assert set(table) >= {"model", "dataset", "method", "logger", "extract", "sweep", "debug"}
    for group, options in table.items():
        if group == "experiment":  # "see conf/experiment/"
            continue
        on_disk = {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}
        assert options == on_disk, group


def commands(text: str, program: str) -> list[list[str]]:
    """The command lines of ``program`` in the bash blocks of ``text`` (continuations joined,
    comments dropped), as argument lists after the program."""
    out = []
    for block in code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if program not in line:  # (a python -c "..." spans lines: not one for shlex)
                continue
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == program or word.endswith("/" + program):
                    out.append(words[i + 1:])
                    break
    return out


DOCS = {"README.md": README} | {
    f"docs/{n}.md": (REPO / "docs" / f"{n}.md").read_text() for n in ("baselines", "data", "lavis")}
RUN_COMMANDS = [(doc, args) for doc, text in DOCS.items() for args in commands(text, "run.py")]


def test_the_docs_have_run_commands():
    assert sum(doc == "README.md" for doc, _ in RUN_COMMANDS) >= 10


@pytest.mark.parametrize("doc,args", RUN_COMMANDS, ids=[" ".join(a) for _, a in RUN_COMMANDS])
def test_run_command_of_the_docs_composes(doc, args, tmp_path, monkeypatch):
    """A single run composes as written; a sweep (-m) composes with the first value of each
    swept key (Hydra's compose takes no sweeps); only overrides are checked, nothing runs."""
    from nnn.settings import compose

    monkeypatch.setenv("NNN_OUTPUT_DIR", str(tmp_path))
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if len(overrides) < len(args):
        overrides = [re.sub(r"^([^=]+)=([^,(]*),.*$", r"\1=\2", a) for a in overrides]
    compose(overrides)


def test_readme_nnn_index_demo_parses():
    from nnn.index_cli import parser

    lines = commands(README, "nnn-index")
    assert [a[0] for a in lines] == ["refs", "build", "query", "info", "shards", "merge"]
    for args in lines:
        try:
            parser().parse_args(args)
        except SystemExit:  # argparse has printed why
            pytest.fail(f"README's demo: nnn-index {' '.join(args)} does not parse")


def test_readme_commands_are_those_of_ci_and_install_md():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    blocks = [b.strip() for b in code_blocks(README.split("\n## Use it as a library")[0], "bash")]
    assert blocks[1] == ci
    install = code_blocks((REPO / "docs" / "install.md").read_text(), "bash")[0].strip()
    assert blocks[0].startswith(install + " && ")


def test_readme_library_example_runs(unit, capsys):
    """README's first python block on small data: shapes, dtypes and formulas its comments give."""
    gallery, ref_captions, queries = unit(37, 16), unit(600, 16), unit(185, 16)
    caption_to_image = np.repeat(np.arange(37), 5)
    ns = {"gallery": gallery, "ref_captions": ref_captions, "queries": queries,
          "caption_to_image": caption_to_image}
    exec(compile(code_blocks(README, "python")[0], "README.md", "exec"), ns)
    m, s64 = ns["m"], ref_captions.astype(np.float64) @ gallery.T.astype(np.float64)
    bias = 0.75 * np.sort(s64, axis=0)[-16:].mean(axis=0)
    assert m.bias_.shape == (37,) and m.bias_.dtype == np.float32
    np.testing.assert_allclose(m.bias_, bias, atol=1e-6)
    np.testing.assert_allclose(ns["S"], queries.astype(np.float64) @ gallery.T - bias, atol=1e-5)
    assert ns["scores"].shape == ns["ids"].shape == (185, 10)
    assert ns["table"].shape == (2, 4, 37)
    gallery_aug = ns["gallery_aug"]
    assert gallery_aug.shape == (37, 17)
    np.testing.assert_allclose(np.asarray(ns["fold_queries"](queries)) @ gallery_aug.T, ns["S"],
                               atol=1e-5)
    assert "R@1" in capsys.readouterr().out
