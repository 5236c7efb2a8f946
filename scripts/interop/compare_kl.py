"""Check saekit's next-token KL against e2e_sae's and sparsify's own code, and (re)make tests/fixtures/kl_anchors/.

    python scripts/interop/compare_kl.py [--setup] [--venvs DIR]

Each anchor runs in its own venv (default ``$SAEKIT_KL_VENVS`` or /work/venvs: ``e2e-sae`` and
``sparsify``); ``--setup`` builds them: torch 2.13.0 (the CPU build pip finds here) first, refusing if a
dry run would fetch any nvidia-*/CUDA package, then the anchor under benchmarks/constraints.txt.
``e2e-sae`` 2.1.1 declares its dependencies unpinned, and today's releases break it, so its venv also
gets ``transformer-lens<3`` (4.0 removed ``HookedTransformer``), ``datasets<4`` and ``pyarrow<21`` (the
newest pyarrow needs numpy 2, the rest of that venv pins numpy 1), and loses torchvision (a CUDA build
beside CPU torch: ``import transformers`` fails).

What runs where. The logits are seeded float32 [2, 6, vocab] clean and spliced tensors and a [2, 4]
mask of the scored predictions (saekit scores positions 1..seq-2: BOS's prediction and the last are
dropped). Each anchor gets the scored rows (``logits[:, 1:-1][mask]``) and runs its own code:

- e2e_sae: ``e2e_sae.losses.LogitsKLLoss.calc_loss(new_logits=spliced, orig_logits=clean)``, i.e.
  ``F.kl_div(log_softmax(new), log_softmax(orig), log_target=True, reduction="batchmean")``: KL(clean ||
  spliced), mean over rows. (``import e2e_sae`` itself fails in 2.1.1: its ``__init__`` imports
  ``e2e_sae.scripts.train_tlens``, which the wheel does not ship; the worker loads the package's modules
  without running that ``__init__``.)
- sparsify: its ``loss_fn="kl"`` has no function of its own; it is three statements inside
  ``Trainer.fit`` (sparsify/trainer.py): ``clean_probs = self.model(x).logits.softmax(dim=-1)``,
  ``dirty_lps = self.model(x).logits.log_softmax(dim=-1)`` (the second forward has the SAE spliced in)
  and ``kl = -torch.sum(clean_probs * dirty_lps, dim=-1).mean()``: the cross-entropy
  H(p_clean, q_spliced) = KL(p_clean || q_spliced) + H(p_clean), mean over every position. The worker
  reads those statements from the installed source (failing if they changed) and executes them with a
  stand-in model that returns the fixed logits; the clean entropy H(p_clean) is the same statements run
  with the clean logits as both forwards, so sparsify's KL = its value - that entropy.

Two cases: ``fixture`` (vocabulary 512, written to tests/fixtures/kl_anchors/: ``logits.safetensors``
and ``anchors.json`` with both anchors' values and versions, read by tests/training/test_objectives.py)
and ``vocab_49152`` (the default model's vocabulary, checked here only; the arithmetic is
vocabulary-agnostic). The script exits non-zero if saekit differs from an anchor by more than 1e-6.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "kl_anchors"
CONSTRAINTS = ROOT / "benchmarks" / "constraints.txt"
TORCH = "torch==2.13.0"
ANCHORS = {
    "e2e_sae": ("e2e-sae", ("e2e-sae==2.1.1", "transformer-lens<3", "datasets<4", "pyarrow<21"), ("torchvision",)),
    "sparsify": ("sparsify", ("eai-sparsify==1.3.3",), ()),
}
DISTRIBUTIONS = {"e2e_sae": "e2e-sae", "sparsify": "eai-sparsify"}
CASES = {"fixture": 512, "vocab_49152": 49152}
SHAPE = (2, 6)  # contexts, positions
SEED = 20261226
TOLERANCE = 1e-6
CLEAN_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
SPARSIFY_STATEMENTS = {  # sparsify 1.3.3, Trainer.fit: the target name and the source text expected
    "clean_probs": "self.model(x).logits.softmax(dim=-1)",
    "dirty_lps": "self.model(x).logits.log_softmax(dim=-1)",
    "kl": "-torch.sum(clean_probs * dirty_lps, dim=-1).mean()",
}


# ---- inside an anchor's venv (no saekit here) ----------------------------------------------------
def _scored_rows(path: str) -> tuple:
    from safetensors.torch import load_file

    tensors = load_file(path)
    mask = tensors["mask"].bool()
    return tensors["clean"][:, 1:-1][mask], tensors["spliced"][:, 1:-1][mask]


def _e2e_sae_kl(clean, spliced) -> dict:
    import importlib.util
    import types

    if "e2e_sae" not in sys.modules:  # its __init__ imports a module the wheel lacks; load the rest without it
        spec = importlib.util.find_spec("e2e_sae")
        package = types.ModuleType("e2e_sae")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["e2e_sae"] = package
    from e2e_sae.losses import LogitsKLLoss

    value = LogitsKLLoss(coeff=1.0).calc_loss(new_logits=spliced, orig_logits=clean)
    return {"kl": float(value)}


def _sparsify_statements() -> dict:
    import inspect
    import textwrap

    from sparsify.trainer import Trainer

    tree = ast.parse(textwrap.dedent(inspect.getsource(Trainer.fit)))
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in SPARSIFY_STATEMENTS:
            found[node.targets[0].id] = node
    for name, expected in SPARSIFY_STATEMENTS.items():
        if name not in found:
            sys.exit(f"sparsify's Trainer.fit has no statement assigning {name}; update this script")
        text = ast.unparse(found[name].value)
        if expected not in text:
            sys.exit(f"sparsify's Trainer.fit computes {name} = {text}, not {expected}; update this script")
    return found


def _sparsify_kl(clean, spliced) -> dict:
    import types

    import torch

    statements = _sparsify_statements()

    def run(first, second) -> float:
        logits = iter([first[None], second[None]])  # [1, rows, vocab]: a batch of one context
        model = lambda x: types.SimpleNamespace(logits=next(logits))  # noqa: E731
        scope = {"torch": torch, "x": None, "self": types.SimpleNamespace(
            model=model, cfg=types.SimpleNamespace(loss_fn="kl"))}
        for name in ("clean_probs", "dirty_lps", "kl"):
            exec(compile(ast.Module(body=[statements[name]], type_ignores=[]), f"sparsify:{name}", "exec"), scope)
        return float(scope["kl"])

    cross_entropy, entropy = run(clean, spliced), run(clean, clean)
    return {"cross_entropy": cross_entropy, "clean_entropy": entropy, "kl": cross_entropy - entropy}


def worker(anchor: str, inputs: list[str], output: str) -> None:
    import importlib.metadata

    import torch

    compute = {"e2e_sae": _e2e_sae_kl, "sparsify": _sparsify_kl}[anchor]
    results = {}
    for path in inputs:
        clean, spliced = _scored_rows(path)
        results[Path(path).stem] = compute(clean, spliced)
    versions = {DISTRIBUTIONS[anchor]: importlib.metadata.version(DISTRIBUTIONS[anchor]), "torch": torch.__version__}
    Path(output).write_text(json.dumps({"results": results, "versions": versions}, indent=2) + "\n")


# ---- setup ---------------------------------------------------------------------------------------
def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def _refuse_cuda(python: Path, *args: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        _pip(python, "install", "--dry-run", "--quiet", "--report", report.name, *args)
        names = [item["metadata"]["name"].lower() for item in json.loads(Path(report.name).read_text())["install"]]
    if cuda := [n for n in names if n.startswith(("nvidia-", "cuda", "triton"))]:
        sys.exit(f"pip would fetch CUDA packages ({', '.join(cuda)}); make a CPU torch wheel available and rerun")


def setup(venvs: Path) -> None:
    for directory, requirements, remove in ANCHORS.values():
        venv = venvs / directory
        python = venv / "bin" / "python"
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _refuse_cuda(python, TORCH)
        _pip(python, "install", TORCH)
        constrained = ("-c", str(CONSTRAINTS), *requirements)
        _refuse_cuda(python, *constrained)
        _pip(python, "install", *constrained)
        if remove:
            _pip(python, "uninstall", "--yes", *remove)


# ---- saekit's side -------------------------------------------------------------------------------
def make_cases(directory: Path) -> dict[str, Path]:
    """Seeded clean and spliced logits ([2, 6, vocab] float32) and the scored-prediction mask, one file a case."""
    import torch
    from safetensors.torch import save_file

    paths = {}
    for name, vocab in CASES.items():
        generator = torch.Generator().manual_seed(SEED + vocab)
        clean = 3.0 * torch.randn(*SHAPE, vocab, generator=generator)
        spliced = clean + 0.8 * torch.randn(*SHAPE, vocab, generator=generator)
        mask = torch.ones(SHAPE[0], SHAPE[1] - 2, dtype=torch.bool)
        mask[0, 1] = mask[1, 3] = False  # some scored predictions left out, as a mask can
        paths[name] = directory / f"{name}.safetensors"
        save_file({"clean": clean, "spliced": spliced, "mask": mask}, str(paths[name]))  # seed: anchors.json
    return paths


def saekit_values(path: Path) -> dict[str, float]:
    from safetensors.torch import load_file

    from saekit.training.objectives import next_token_kl

    tensors = load_file(str(path))
    clean, spliced, mask = tensors["clean"], tensors["spliced"], tensors["mask"].bool()
    return {"kl": float(next_token_kl(clean, spliced, mask)),
            "kl_chunk_1": float(next_token_kl(clean, spliced, mask, chunk=1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="build the anchors' venvs first")
    parser.add_argument("--venvs", type=Path, default=Path(os.environ.get("SAEKIT_KL_VENVS", "/work/venvs")))
    parser.add_argument("--worker", choices=sorted(ANCHORS), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.inputs, args.output)
        return
    if args.setup:
        setup(args.venvs)
    FIXTURE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        paths = make_cases(Path(scratch))
        anchors, versions = {}, {}
        for anchor, (directory, _, _) in ANCHORS.items():
            python = args.venvs / directory / "bin" / "python"
            if not python.is_file():
                sys.exit(f"{python} is missing: run with --setup")
            output = Path(scratch) / f"{anchor}.json"
            subprocess.run([str(python), __file__, "--worker", anchor, "--output", str(output), "--inputs",
                            *map(str, paths.values())], check=True, env=CLEAN_ENV, cwd=scratch)
            found = json.loads(output.read_text())
            anchors[anchor], versions[anchor] = found["results"], found["versions"]
        saekit = {name: saekit_values(path) for name, path in paths.items()}
        (FIXTURE / "logits.safetensors").write_bytes(paths["fixture"].read_bytes())
    import torch

    worst = 0.0
    for name in CASES:
        for anchor in ANCHORS:
            difference = abs(saekit[name]["kl"] - anchors[anchor][name]["kl"])
            worst = max(worst, difference)
            print(f"{name:12s} saekit {saekit[name]['kl']:.9f}  {anchor:9s} {anchors[anchor][name]['kl']:.9f}  "
                  f"|diff| {difference:.2e}")
    record = {
        "what": "KL(clean || spliced) of next-token distributions on seeded logits, by saekit and by the anchors' "
                "own code (see scripts/interop/compare_kl.py); the fixture case's logits are logits.safetensors",
        "shape": [*SHAPE, "vocab"], "seed": SEED, "cases": CASES, "tolerance": TOLERANCE,
        "anchors": anchors, "versions": {**versions, "saekit_torch": torch.__version__},
        "saekit_at_creation": saekit, "max_abs_diff": worst,
    }
    (FIXTURE / "anchors.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"max |saekit - anchor| = {worst:.2e}; wrote {FIXTURE}")
    if worst > TOLERANCE:
        sys.exit(f"saekit's KL differs from an anchor's by {worst:.2e} > {TOLERANCE}")


if __name__ == "__main__":
    main()
