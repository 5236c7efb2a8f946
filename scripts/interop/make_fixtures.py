"""Make tests/fixtures/interop/ with the anchors' own code, then check saekit's readers reproduce it.

    python scripts/interop/make_fixtures.py [--setup] [--saelens-python PY] [--sparsify-python PY]

``--setup`` builds scripts/interop/.anchors-venv (torch first, then sae-lens and eai-sparsify under
benchmarks/constraints.txt), refusing if a dry run would fetch any nvidia-*/CUDA package. Without
it, each worker runs in the given interpreter (default: that venv's python).
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
VENV = HERE / ".anchors-venv"
FIXTURES = ROOT / "tests" / "fixtures" / "interop"


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def _dry_run_refuses_cuda(python: Path, *args: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        _pip(python, "install", "--dry-run", "--quiet", "--report", report.name, *args)
        names = [item["metadata"]["name"].lower() for item in json.loads(Path(report.name).read_text())["install"]]
    cuda = [n for n in names if n.startswith(("nvidia-", "cuda", "triton"))]
    if cuda:
        sys.exit(f"pip would fetch CUDA packages ({', '.join(cuda)}); stopping")


def setup() -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    python = VENV / "bin" / "python"
    torch_args = ("torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu")
    _dry_run_refuses_cuda(python, *torch_args)
    _pip(python, "install", *torch_args)
    anchors = ("-c", str(ROOT / "benchmarks" / "constraints.txt"), "sae-lens", "eai-sparsify")
    _dry_run_refuses_cuda(python, *anchors)
    _pip(python, "install", *anchors)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true")
    parser.add_argument("--saelens-python", type=Path)
    parser.add_argument("--sparsify-python", type=Path)
    args = parser.parse_args()
    default = setup() if args.setup else VENV / "bin" / "python"
    for anchor, python in (("saelens", args.saelens_python or default), ("sparsify", args.sparsify_python or default)):
        subprocess.run([str(python), str(HERE / f"{anchor}_worker.py"), str(FIXTURES / anchor)], check=True,
                       env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"})
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    str(ROOT / "tests/dictionaries/test_formats_saelens.py"),
                    str(ROOT / "tests/dictionaries/test_formats_sparsify.py")], check=True)


if __name__ == "__main__":
    main()
