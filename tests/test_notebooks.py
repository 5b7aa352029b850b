"""notebooks/*.ipynb: committed without outputs, and each runs top to bottom against a reduced demo run.

The run is the one tests/test_report.py shares (one per session). The kernels get ORCA_RUN_DIR (and the
same run as the training notebook's second, overlaid run), one CPU device, and fewer questions to decode.
"""

import pathlib

import nbformat
import pytest

from test_report import shared_demo_run

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("data.ipynb", "model.ipynb", "training.ipynb")


def test_the_notebooks_are_there():
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == list(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_without_outputs(name):
    """Outputs would put a run's numbers (and megabytes of PNG) into every diff; strip them before committing
    (e.g. `jupyter nbconvert --clear-output --inplace notebooks/*.ipynb`)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for index, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: code cell {index} has outputs"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "ORCA_RUN_DIR" in first.source, "open with what it shows and how"
    assert "ORCA_RUN_DIR" in code[0].source and "RUN_DIR =" in code[0].source


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return shared_demo_run(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_runs_top_to_bottom(name, demo_run, monkeypatch):
    from nbclient import NotebookClient

    workdir, _ = demo_run
    for variable, value in {"ORCA_RUN_DIR": str(workdir), "ORCA_OTHER_RUN_DIR": str(workdir),
                            "ORCA_EXAMPLES_PER_TASK": "1", "ORCA_MAX_NEW_TOKENS": "32",
                            "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
                            "MPLBACKEND": "module://matplotlib_inline.backend_inline"}.items():
        monkeypatch.setenv(variable, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on a cell's error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert images, f"{name} drew no figure"
    assert not any(output.output_type == "error" for output in outputs)
    if name == "model.ipynb":
        text = "".join(output.get("text", "") for output in outputs)
        assert "untrained" in text and "stage1 (step 24)" in text and "stage2 (step 36)" in text, text
