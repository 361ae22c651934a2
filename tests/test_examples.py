"""The examples run, with small budgets, and show what they claim to show."""

import ast
import difflib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = EXAMPLES / "sinusoid.ipynb"
DROP_IN = EXAMPLES / "learn2learn_drop_in.py"
CUSTOM_TASK = EXAMPLES / "custom_task.py"
KERNEL = "metakit-examples"


def run_example(script: Path, *args: str, timeout: int = 120, threads: str = "1") -> str:
    """Run ``script`` with this interpreter and ``OMP_NUM_THREADS=threads`` (unset if ``None``); its
    stdout (stderr on failure)."""
    env = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    env.update(PYTHONHASHSEED="0", **({} if threads is None else {"OMP_NUM_THREADS": threads}))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    print(f"{script.name} {' '.join(args)}: {time.perf_counter() - start:.1f}s")
    assert done.returncode == 0, done.stderr
    assert "Gym has been unmaintained" not in done.stderr, "gym's deprecation banner is kept out"
    return done.stdout


# --- examples/sinusoid.ipynb -------------------------------------------------------------------


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert re.fullmatch(r"ITERATIONS = \d+\s*(#.*)?", code[0].source.strip()), code[0].source
    assert "parameters" in code[0].metadata.get("tags", [])


def test_notebook_runs_and_adaptation_lowers_the_held_out_loss(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    budget = next(cell for cell in nb.cells if cell.cell_type == "code")
    budget.source = "ITERATIONS = 200"  # the parameter cell: a budget of seconds
    # A kernel spec for this very interpreter, found only by this test: a fresh clone's .venv
    # works, and a user's own "python3" kernel spec (maybe another Python) is not picked up.
    write_kernel_spec(tmp_path / "kernels" / KERNEL)
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kernel = KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    client = NotebookClient(nb, km=kernel, timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()  # a failing cell (the final assertion included) raises CellExecutionError
    finally:
        if kernel.has_kernel:  # nbclient leaves a kernel it did not start running
            kernel.shutdown_kernel(now=True)
    print(f"sinusoid.ipynb: {time.perf_counter() - start:.1f}s")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    assert "adaptation lowered the held-out MSE" in "".join(o.get("text", "") for o in code[-1].outputs)
    images = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the adaptation plot is shown inline"


# --- examples/learn2learn_drop_in.py ------------------------------------------------------------


def meta_losses(output: str):
    """The meta-loss the drop-in example prints at the start and at the end."""
    start = float(re.search(r"meta-loss at the start: ([\d.]+)", output).group(1))
    end = float(re.search(r"meta-loss at the end: ([\d.]+)", output).group(1))
    return start, end


@pytest.mark.parametrize("algorithm", ["l2l", "metakit"])
def test_drop_in_variant_lowers_the_meta_loss(algorithm):
    # The metakit variant runs without OMP_NUM_THREADS: the script itself then takes one thread.
    threads = "1" if algorithm == "l2l" else None
    output = run_example(
        DROP_IN, "--algorithm", algorithm, "--iterations", "15", "--meta-batch", "10", threads=threads
    )
    assert output.splitlines()[0] == "intra-op threads: 1", output
    start, end = meta_losses(output)
    print(f"meta-loss {start:.4f} -> {end:.4f}")
    assert end < start - 0.1, output


def construction(tree: ast.Module) -> ast.If:
    """The ``if`` of ``main()`` that builds the algorithm from the flag; checks that it is the only
    place the flag is read and that it only builds the algorithm."""
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    reads = [
        node
        for node in ast.walk(main)
        if isinstance(node, ast.Attribute) and node.attr == "algorithm" and isinstance(node.ctx, ast.Load)
    ]
    assert len(reads) == 1, "--algorithm is read in one place only"
    (branch,) = [node for node in ast.walk(main) if isinstance(node, ast.If) and node.test is reads[0].parent]
    for body in (branch.body, branch.orelse):
        assert len(body) == 1 and isinstance(body[0], ast.Assign), "each branch is one assignment"
        assert [t.id for t in body[0].targets] == ["maml"], "each branch only builds the algorithm"
    return main, branch


def variant(tree: ast.Module, keep: str) -> list:
    """The source lines of the script with the construction ``if`` replaced by one branch."""
    main, branch = construction(tree)
    index = main.body.index(branch)
    chosen = branch.body if keep == "l2l" else branch.orelse
    main.body[index : index + 1] = chosen
    return ast.unparse(tree).splitlines()


def parse_with_parents(path: Path) -> ast.Module:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    return tree


def test_drop_in_variants_share_the_training_loop():
    tree = parse_with_parents(DROP_IN)
    main, branch = construction(tree)
    # Everything after the construction (optimizer, training loop, reporting) never mentions
    # either algorithm: it is the same code for both.
    rest = main.body[main.body.index(branch) + 1 :]
    names = {n.id for stmt in rest for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    assert not names & {"l2l", "MAMLEnhanced"}
    assert any(isinstance(stmt, ast.For) for stmt in rest), "the training loop follows the construction"
    # The two variants, each written out alone, differ in exactly one line: the construction.
    l2l_lines = variant(parse_with_parents(DROP_IN), "l2l")
    metakit_lines = variant(parse_with_parents(DROP_IN), "metakit")
    diff = [
        line
        for line in difflib.unified_diff(l2l_lines, metakit_lines, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert diff == [
        "-    maml = l2l.algorithms.MAML(model, lr=args.fast_lr)",
        "+    maml = MAMLEnhanced(model, lr=args.fast_lr, inner_steps=args.adapt_steps)",
    ]


# --- examples/custom_task.py --------------------------------------------------------------------


def test_custom_task_trains_and_adaptation_lowers_the_mse(tmp_path):
    output = run_example(CUSTOM_TASK, "--iterations", "100", "--tasks", "200", "--out", str(tmp_path / "run"))
    # shots, steps, MSE, CI, [median, worse, diverged: shown when some task got worse], tasks
    extra = r"(?:\s+[\d.]+\s+\d+\s+\d+)?"
    rows = re.findall(rf"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+){extra}\s+(\d+)\s*$", output, re.MULTILINE)
    mse = {(int(shots), int(steps)): float(value) for shots, steps, value, _, _ in rows}
    assert set(mse) == {(k, s) for k in (5, 10) for s in (0, 1, 10)}, output
    for shots in (5, 10):
        assert mse[shots, 10] < mse[shots, 1] < mse[shots, 0], output
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
