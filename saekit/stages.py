"""The stage order: which saekit package may import which, written down once and checked from the code.

``STAGES`` lists the pipeline's packages in order with the stages each may import; the core modules
(``CORE``) may be imported by everyone and import only each other. :func:`violations` reads every
import in the package (module-level and inside functions, since a deferred import is still a
dependency) and reports each edge the table does not allow. ``tests/test_stages.py`` runs it on the
tree and checks that ``ARCHITECTURE.md`` holds the table :func:`stage_table_markdown` renders; after
changing ``STAGES``, ``python -m saekit.stages ARCHITECTURE.md`` rewrites that section.

A second rule keeps what an architecture is inside ``saekit/dictionaries``: :func:`architecture_tests`
reports every place outside it that asks for an architecture by name (comparing with or taking a
prefix of a registered name) or by class (``isinstance`` / ``issubclass`` with a dictionary class
other than the ``Dictionary`` interface). The rest of saekit asks the dictionary instead (its
``SPAN`` and per-layer methods), so a new architecture touches its own module and the registry only.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from saekit.render import markdown_code, markdown_table

# Top-level modules below every stage.
CORE = ("errors", "io", "settings", "render", "stages", "provenance", "locks", "rundir", "site_kinds", "memory")


@dataclass(frozen=True)
class Stage:
    name: str  # the package under saekit/
    role: str
    imports: tuple[str, ...]  # the stages it may import (besides CORE)


STAGES: tuple[Stage, ...] = (
    Stage("data", "text: corpora, train/eval split, token contexts", ()),
    Stage("models", "loading models, site names, hooks", ()),
    Stage("activations", "activations at sites, the cache, shuffled batches", ("data", "models")),
    Stage("dictionaries", "SAE and transcoder architectures, saving and loading", ()),
    Stage("training", "run config, trainer, checkpoints, runs", ("data", "models", "activations", "dictionaries")),
    Stage("evaluation", "spliced losses, reconstruction, effective compute, reports",
          ("data", "models", "activations", "dictionaries", "training")),
    Stage("analysis", "latent statistics, geometry, logit weights, example store",
          ("data", "models", "activations", "dictionaries", "training")),
    Stage("dashboard", "the static site from an analysis", ("models", "analysis")),
    Stage("autointerp", "explanations and detection/fuzzing/intruder scores",
          ("models", "activations", "dictionaries", "training", "analysis")),
    Stage("toy", "synthetic worlds and toy models with ground truth", ("dictionaries", "training")),
    Stage("circuits", "local replacement models, attribution graphs, interventions",
          ("data", "models", "activations", "dictionaries", "training", "analysis")),
    Stage("probing", "labelled tasks, sparse probing, SCR/TPP, structure metrics",
          ("data", "models", "activations", "dictionaries", "training", "evaluation")),
    Stage("jobs", "orchestration across stages: quickstart, sweep, dashboard, explain, control, reliability",
          ("data", "models", "activations", "dictionaries", "training", "evaluation", "analysis", "dashboard",
           "autointerp", "toy", "circuits", "probing")),
    Stage("serve", "the live explorer: local web app and Neuronpedia-compatible API over runs",
          ("data", "models", "activations", "dictionaries", "training", "evaluation", "analysis", "dashboard",
           "autointerp", "circuits")),
    Stage("cli", "the command line", ("data", "models", "activations", "dictionaries", "training", "evaluation",
                                      "analysis", "dashboard", "autointerp", "toy", "circuits", "probing", "jobs",
                                      "serve")),
)

ENTRY_POINTS = {"__init__": (), "__main__": ("cli",)}  # saekit/__init__.py and python -m saekit


def allowed_imports() -> dict[str, set[str]]:
    """Stage (or core module) -> what it may import."""
    allowed = {name: set(CORE) for name in CORE}
    allowed.update({stage.name: set(CORE) | set(stage.imports) for stage in STAGES})
    allowed.update({name: set(CORE) | set(targets) for name, targets in ENTRY_POINTS.items()})
    return allowed


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "saekit" and len(parts) > 1 else None


def import_edges(package_dir: Path) -> list[tuple[str, str, str, int]]:
    """(importing stage, imported stage, file, line) for every import of another saekit stage."""
    edges = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir.parent).with_suffix("")
        source = _stage_of(".".join(relative.parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for module in _imported_modules(node):
                target = _stage_of(module)
                if target is not None and target != source:
                    edges.append((source or "saekit", target, str(path), node.lineno))
    return edges


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "saekit":  # from saekit import cli
            return [f"saekit.{alias.name}" for alias in node.names]
        return [node.module]
    return []


def violations(package_dir: Path) -> list[str]:
    """One line per import the stage table does not allow (an unknown stage is a violation too)."""
    allowed = allowed_imports()
    found = []
    for source, target, path, line in import_edges(package_dir):
        if source not in allowed:
            found.append(f"{path}:{line}: {source} is not a stage in saekit/stages.py")
        elif target not in allowed[source]:
            found.append(f"{path}:{line}: {source} imports {target}, which it may not (see saekit/stages.py)")
    return found


DICTIONARIES = "dictionaries"  # the stage that alone may know architectures by name or class
INTERFACE_CLASSES = {"Dictionary", "DictionaryConfig", "DictionaryOptions", "DictionaryOutput", "DictionarySettings",
                     "SparseLatents", "Span"}


def _dictionary_facts(package_dir: Path) -> tuple[set[str], set[str]]:
    """(registered architecture names, dictionary classes other than the interface), read from the source."""
    names: set[str] = set()
    bases: dict[str, set[str]] = {}
    for path in (package_dir / DICTIONARIES).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {base.id for base in node.bases if isinstance(base, ast.Name)}
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict) and \
                    path.name == "registry.py" and any(getattr(t, "id", None) == "ARCHITECTURES" for t in targets):
                names |= {key.value for key in node.value.keys if isinstance(key, ast.Constant)}
    classes = {"Dictionary"}
    while True:  # every class descending from Dictionary
        grown = classes | {name for name, parents in bases.items() if parents & classes}
        if grown == classes:
            return names, classes - INTERFACE_CLASSES
        classes = grown


def _asks_for_architecture(node: ast.AST, names: set[str], classes: set[str]) -> str | None:
    """What ``node`` tests, if it tests an architecture's name or class."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr in ("startswith", "endswith") and node.args and isinstance(node.args[0], ast.Constant):
        prefix = node.args[0].value
        if isinstance(prefix, str) and any(name.startswith(prefix) or name.endswith(prefix) for name in names):
            return f"{node.func.attr}({prefix!r})"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass") \
            and len(node.args) == 2:
        tested = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node.args[1])
                  if isinstance(n, ast.Name | ast.Attribute)}
        if tested & classes:
            return f"{node.func.id}(..., {', '.join(sorted(tested & classes))})"
    if isinstance(node, ast.Compare):
        constants = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        if constants & names:
            return f"a comparison with {', '.join(sorted(constants & names))}"
    return None


def architecture_tests(package_dir: Path) -> list[str]:
    """One line per place outside ``saekit/dictionaries`` that tests an architecture's name or class."""
    names, classes = _dictionary_facts(package_dir)
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        if path.relative_to(package_dir).parts[0] == DICTIONARIES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            what = _asks_for_architecture(node, names, classes)
            if what:
                found.append(f"{path}:{node.lineno}: {what} asks for an architecture by name or class; ask the "
                             "dictionary (its SPAN and per-layer methods, saekit/dictionaries/base.py) instead")
    return found


BEGIN, END = "<!-- stage-order: generated by `python -m saekit.stages ARCHITECTURE.md` -->", "<!-- /stage-order -->"


def stage_table_markdown() -> str:
    table = markdown_table(("stage", "package", "role", "may import (besides the core modules)"),
                           [(i, markdown_code(f"saekit/{s.name}"), s.role, ", ".join(s.imports) or None)
                            for i, s in enumerate(STAGES, 1)])
    core = ", ".join(f"`{name}`" for name in CORE)
    return "\n".join([BEGIN, table, "", f"Core modules, importable everywhere and importing only each other: {core}.",
                      END])


def rewrite_section(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:start] + stage_table_markdown() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    rewrite_section(Path(sys.argv[1]))
