"""The stage order holds in the code, a planted back-import is caught, and ARCHITECTURE.md shows the table."""

import shutil
from pathlib import Path

import pytest

import saekit
from saekit.stages import BEGIN, END, STAGES, architecture_tests, import_edges, stage_table_markdown, violations

PACKAGE = Path(saekit.__file__).parent
ROOT = PACKAGE.parent


def test_the_tree_keeps_the_stage_order():
    assert violations(PACKAGE) == []


def test_every_package_is_a_stage():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {stage.name for stage in STAGES}


def test_a_planted_function_level_back_import_is_caught(tmp_path):
    copy = tmp_path / "saekit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    contexts = copy / "data" / "contexts.py"
    contexts.write_text(contexts.read_text() + "\n\ndef _sneaky():\n    from saekit.jobs.quickstart import QUICKSTART\n"
                        "    return QUICKSTART\n")
    found = violations(copy)
    assert len(found) == 1 and "data imports jobs" in found[0] and "contexts.py" in found[0]
    assert ("data", "jobs") in {(source, target) for source, target, _, _ in import_edges(copy)}


def test_a_module_level_import_of_a_later_stage_is_caught(tmp_path):
    copy = tmp_path / "saekit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    trainer = copy / "training" / "trainer.py"
    trainer.write_text("from saekit.evaluation.splice import SpliceTarget  # noqa\n" + trainer.read_text())
    assert [v for v in violations(copy) if "training imports evaluation" in v]


def test_architecture_md_holds_the_generated_table():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text[text.index(BEGIN):text.index(END) + len(END)]
    assert section == stage_table_markdown(), "run `python -m saekit.stages ARCHITECTURE.md` to regenerate it"


def test_no_code_outside_the_dictionaries_asks_for_an_architecture():
    assert architecture_tests(PACKAGE) == []


@pytest.mark.parametrize(("module", "planted", "reported"), [
    ("evaluation/report.py", 'def _sneaky(name):\n    return name.startswith("clt_")\n', "startswith('clt_')"),
    ("analysis/analyze.py", 'def _sneaky(name):\n    return name == "crosscoder"\n', "comparison with crosscoder"),
    ("training/trainer.py", "def _sneaky(d):\n    from saekit.dictionaries.crosslayer import CrossLayerTranscoder\n"
                            "    return isinstance(d, CrossLayerTranscoder)\n",
     "isinstance(..., CrossLayerTranscoder)"),
])
def test_a_planted_architecture_test_is_caught(tmp_path, module, planted, reported):
    copy = tmp_path / "saekit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text() + "\n\n" + planted)
    found = architecture_tests(copy)
    assert len(found) == 1 and module.split("/")[-1] in found[0] and reported in found[0]


def test_the_dictionaries_themselves_may_name_architectures(tmp_path):
    copy = tmp_path / "saekit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / "dictionaries" / "registry.py"
    path.write_text(path.read_text() + '\n\ndef _named(name):\n    return name.startswith("clt_")\n')
    assert architecture_tests(copy) == []
