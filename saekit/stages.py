"""The stage order: which saekit package may import which, written down once and checked from the code.

``STAGES`` lists the pipeline's packages in order with the stages each may import; the core modules
(``CORE``) may be imported by everyone and import only each other. :func:`violations` reads every
import in the package (module-level and inside functions, since a deferred import is still a
dependency) and reports each edge the table does not allow. ``tests/test_stages.py`` runs it on the
tree and checks that ``ARCHITECTURE.md`` holds the table :func:`stage_table_markdown` renders; after
changing ``STAGES``, ``python -m saekit.stages ARCHITECTURE.md`` rewrites that section.
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
    Stage("jobs", "orchestration across stages: quickstart, sweep, dashboard, explain, control",
          ("data", "models", "activations", "dictionaries", "training", "evaluation", "analysis", "dashboard",
           "autointerp", "toy", "circuits")),
    Stage("cli", "the command line", ("data", "models", "activations", "dictionaries", "training", "evaluation",
                                      "analysis", "dashboard", "autointerp", "toy", "circuits", "jobs")),
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
