"""The notebooks run top to bottom offline (nbclient, on the project's own interpreter)."""

from __future__ import annotations

import sys

import nbformat
import pytest
from nbclient import NotebookClient

from nnn.config_dir import CONFIG_DIR

NOTEBOOKS = CONFIG_DIR.parent / "notebooks"


def _execute(path, tmp_path, monkeypatch, **env):
    """Execute a copy of the notebook at ``path`` (cwd: notebooks/) with extra environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    nb = nbformat.read(path, as_version=4)
    # the last cell reports the kernel's interpreter: "python3" must resolve to this one
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    nbformat.write(nb, tmp_path / path.name)
    return nb


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


def test_hubness_notebook_runs_its_own_experiment(tmp_path, monkeypatch):
    nb = _execute(NOTEBOOKS / "hubness_and_nnn.ipynb", tmp_path, monkeypatch,
                  NNN_NOTEBOOK_FRESH="1", NNN_NOTEBOOK_OUT=str(tmp_path / "out"),
                  NNN_RUN_DIR="")
    assert _text(nb.cells[-1]).strip() == sys.executable
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert f"run: {tmp_path / 'out' / 'run'}" in text
    assert "t2i/hubness/kurtosis" in text and "t2i R@1:" in text
    assert "the 10 biggest hubs take" in text
    assert _images(nb) == 5  # N_1 histograms, hubs, recall, bias vs N_1, alpha x k heat maps
    assert (tmp_path / "out" / "run" / "hubness_counts.npz").is_file()


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_hubness_notebook_follows_the_runs_settings_and_method(tmp_path, monkeypatch):
    """A CSLS run with N_5 and 90% CIs: the notebook names N_5, says the bias it draws is NNN's
    with its defaults, and shows an undefined statistic (null in results.json) as "-"."""
    from nnn.pipeline import run
    from nnn.results import read_results, write_results
    from nnn.settings import compose

    out = tmp_path / "run"
    run(compose(["logger=none", "method=csls", "eval.hubness_k=5", "eval.ci_level=0.9",
                 "dataset.n_train=600", "dataset.n_test=150", "eval.n_boot=50"]),
        output_dir=out)
    results = read_results(out)
    results["metrics"]["method"]["t2i/hubness/kurtosis"] = None
    write_results(out, results)
    nb = _execute(NOTEBOOKS / "hubness_and_nnn.ipynb", tmp_path, monkeypatch,
                  NNN_RUN_DIR=str(out))
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "hubness of N_5" in text
    assert "the run's method is CSLS: the bias shown is NNN's with its defaults" in text
    (kurtosis,) = [line for line in text.splitlines() if line.startswith("t2i/hubness/kurtosis")]
    assert kurtosis.split()[-1] == "-"
    assert _images(nb) == 4  # no alpha x k grid in this run
