"""Prove saekit's formats with the anchors' own code, both ways, and (re)make tests/fixtures/interop/.

    python scripts/interop/make_fixtures.py [--setup] [--anchors-python PY] [--circuit-tracer-python PY]

``--setup`` builds scripts/interop/.anchors-venv (torch 2.13.0 CPU first, then sae-lens, eai-sparsify and
dictionary-learning under benchmarks/constraints.txt) and scripts/interop/.ct-venv (circuit-tracer; its
transformer-lens pins differ), refusing if a dry run would fetch any nvidia-*/CUDA package, and removes
the torchvision wheel nnsight pulls in (a CUDA build: it breaks ``import transformers`` beside CPU torch;
nothing here uses it).

Then, for each anchor: its own classes save small random dictionaries with its own save function, with
its own latents and reconstructions on fixed inputs (``expected.safetensors``); saekit writes its
dictionaries in that anchor's format and the anchor loads them with its own loader and compares
(relative error at most 1e-5, or the worker exits non-zero). Last, saekit's format tests read every
fixture. Each worker's docstring says what it covers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ANCHORS_VENV, CT_VENV = HERE / ".anchors-venv", HERE / ".ct-venv"
FIXTURES = ROOT / "tests" / "fixtures" / "interop"
SAEKIT_PYTHON = ROOT / ".venv" / "bin" / "python"
# The CPU build pip finds as the registry's torch==2.13.0 here (as scripts/install.sh and the benchmarks install
# it); no --index-url, which machines without access to download.pytorch.org cannot reach.
TORCH = ("torch==2.13.0",)
CLEAN_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}  # nothing of saekit's venv leaks in
FORMAT_TESTS = ("test_formats_saelens.py", "test_formats_sparsify.py", "test_formats_dictionary_learning.py",
                "test_formats_gemma_scope.py", "test_formats_circuit_tracer.py")


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def _dry_run_refuses_cuda(python: Path, *args: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        _pip(python, "install", "--dry-run", "--quiet", "--report", report.name, *args)
        names = [item["metadata"]["name"].lower() for item in json.loads(Path(report.name).read_text())["install"]]
    cuda = [n for n in names if n.startswith(("nvidia-", "cuda", "triton"))]
    if cuda:
        sys.exit(f"pip would fetch CUDA packages ({', '.join(cuda)}); stopping")


def make_venv(venv: Path, *packages: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _dry_run_refuses_cuda(python, *TORCH)
    _pip(python, "install", *TORCH)
    subprocess.run([str(python), "-c", "import torch; assert torch.version.cuda is None, torch.__version__"],
                   check=True)
    anchors = ("-c", str(ROOT / "benchmarks" / "constraints.txt"), *packages)
    _dry_run_refuses_cuda(python, *anchors)
    _pip(python, "install", *anchors)
    _pip(python, "uninstall", "--yes", "torchvision")
    return python


def steps(anchors: Path, circuit_tracer: Path, scratch: Path) -> list[tuple[Path, str, str, Path]]:
    """(interpreter, worker, mode, directory) in order: anchor-written fixtures, then saekit-written files checked."""
    return [
        (anchors, "saelens_worker.py", "anchor", FIXTURES / "saelens"),
        (SAEKIT_PYTHON, "saelens_worker.py", "make", FIXTURES / "saelens"),
        (anchors, "saelens_worker.py", "check", FIXTURES / "saelens"),
        (anchors, "gemma_scope_worker.py", "make", FIXTURES / "gemma_scope"),
        (anchors, "sparsify_worker.py", "fixtures", FIXTURES / "sparsify"),
        (SAEKIT_PYTHON, "sparsify_worker.py", "make", scratch / "sparsify"),
        (anchors, "sparsify_worker.py", "check", scratch / "sparsify"),
        (anchors, "dictionary_learning_worker.py", "make", FIXTURES / "dictionary_learning"),
        (SAEKIT_PYTHON, "circuit_tracer_worker.py", "make", FIXTURES / "circuit_tracer"),
        (circuit_tracer, "circuit_tracer_worker.py", "check", FIXTURES / "circuit_tracer"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="build the two side venvs first")
    parser.add_argument("--anchors-python", type=Path, default=ANCHORS_VENV / "bin" / "python",
                        help="interpreter with sae-lens, eai-sparsify and dictionary-learning")
    parser.add_argument("--circuit-tracer-python", type=Path, default=CT_VENV / "bin" / "python",
                        help="interpreter with circuit-tracer")
    args = parser.parse_args()
    if args.setup:
        args.anchors_python = make_venv(ANCHORS_VENV, "sae-lens", "eai-sparsify", "dictionary-learning")
        args.circuit_tracer_python = make_venv(CT_VENV, "circuit-tracer")
    with tempfile.TemporaryDirectory() as scratch:
        sys.path.insert(0, str(HERE))
        from compare_circuit_tracer_graph import ct_python  # a copied venv without its symlinks still runs

        circuit_tracer = ct_python(args.circuit_tracer_python, Path(scratch))
        for python, worker, mode, directory in steps(args.anchors_python, circuit_tracer, Path(scratch)):
            print(f"== {worker} {mode} ({python})", flush=True)
            env = None if python == SAEKIT_PYTHON else CLEAN_ENV
            subprocess.run([str(python), str(HERE / worker), mode, str(directory)], check=True, env=env)
    subprocess.run([str(SAEKIT_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    *(str(ROOT / "tests" / "dictionaries" / name) for name in FORMAT_TESTS)], check=True)


if __name__ == "__main__":
    main()
