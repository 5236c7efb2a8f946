"""The embedded default corpus, read from Debian packages: the King James Bible, the Python docs and fortunes.

``default_corpus`` runs the ``bible`` command (bible-kjv) for one document per chapter, converts the Python
documentation's reStructuredText sources (python3-doc) to prose with ``saekit.data.rst``, and groups fortune
cookies (fortunes) into documents of about ``FORTUNE_GROUP_CHARS``; ``INSTALL_HINT`` says how to install them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from saekit.data.document import Document
from saekit.data.files import group_pieces
from saekit.data.rst import rst_to_prose
from saekit.errors import SaekitError

INSTALL_HINT = "run `bash scripts/install_corpus.sh` (installs python3-doc, bible-kjv and fortunes)"
FORTUNE_GROUP_CHARS = 2_000
MIN_DOC_PROSE_CHARS = 200
PYTHON_DOCS_GLOB = "/usr/share/doc/python3.*/html/_sources"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_EXCLUDED = frozenset({"art", "ascii-art"})


def default_corpus() -> list[Document]:
    """The embedded English corpus: the King James Bible, the Python documentation and fortune cookies."""
    return [*kjv_bible(), *python_docs(), *_fortunes()]


# --- KJV Bible

BIBLE_BOOKS = tuple(  # canonical order; `bible -f` abbreviates them (Ge, Exo, ..., Rev) in this order
    name.strip()
    for name in """
    Genesis, Exodus, Leviticus, Numbers, Deuteronomy, Joshua, Judges, Ruth, 1 Samuel, 2 Samuel,
    1 Kings, 2 Kings, 1 Chronicles, 2 Chronicles, Ezra, Nehemiah, Esther, Job, Psalms, Proverbs,
    Ecclesiastes, Song of Solomon, Isaiah, Jeremiah, Lamentations, Ezekiel, Daniel, Hosea, Joel,
    Amos, Obadiah, Jonah, Micah, Nahum, Habakkuk, Zephaniah, Haggai, Zechariah, Malachi, Matthew,
    Mark, Luke, John, Acts, Romans, 1 Corinthians, 2 Corinthians, Galatians, Ephesians, Philippians,
    Colossians, 1 Thessalonians, 2 Thessalonians, 1 Timothy, 2 Timothy, Titus, Philemon, Hebrews,
    James, 1 Peter, 2 Peter, 1 John, 2 John, 3 John, Jude, Revelation
    """.split(",")
)
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) ?(.*)$")


def kjv_bible() -> list[Document]:
    """One document per chapter, verses joined into one prose paragraph without their references."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in _bible_dump().splitlines():
        match = _VERSE.match(line.strip())
        if match:
            abbrev, chapter, _verse, text = match.groups()
            chapters.setdefault((abbrev, int(chapter)), []).append(text.strip())
    abbrevs = list(dict.fromkeys(abbrev for abbrev, _ in chapters))
    if len(abbrevs) != len(BIBLE_BOOKS):
        raise SaekitError(
            f"the `bible` command printed {len(abbrevs)} books, not 66; reinstall: {INSTALL_HINT}"
        )
    names = dict(zip(abbrevs, BIBLE_BOOKS, strict=True))
    return [
        Document("kjv-bible", f"kjv-bible/{names[abbrev]} {chapter}", " ".join(v for v in verses if v))
        for (abbrev, chapter), verses in chapters.items()
    ]


def _bible_dump() -> str:
    exe = shutil.which("bible")
    if exe is None:
        raise SaekitError(f"the `bible` command (package bible-kjv) is missing; {INSTALL_HINT}")
    try:  # -f: one verse per line, each prefixed with its reference (no pretty-printing / line wrapping)
        result = subprocess.run(
            [exe, "-f", "gen1:1-rev22:21"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise SaekitError(f"the `bible` command failed ({err}); {INSTALL_HINT}") from err
    return result.stdout


# --- Python docs


def python_docs() -> list[Document]:
    """One document per python3-doc source page (``.rst.txt``) reduced to prose; pages with too little prose dropped."""
    root = _python_docs_root()
    docs: list[Document] = []
    for path in sorted(root.rglob("*.rst.txt"), key=lambda p: p.relative_to(root).as_posix()):
        prose = rst_to_prose(path.read_text(encoding="utf-8", errors="replace"))
        if len(prose) >= MIN_DOC_PROSE_CHARS:
            rel = path.relative_to(root).as_posix().removesuffix(".txt")
            docs.append(Document("python-docs", f"python-docs/{rel}", prose))
    return docs


def _python_docs_root() -> Path:
    def version(path: Path) -> tuple[int, ...]:
        digits = re.findall(r"\d+", path.parent.parent.name)
        return tuple(int(d) for d in digits)

    roots = [p for p in Path("/").glob(PYTHON_DOCS_GLOB.lstrip("/")) if p.is_dir()]
    if not roots:
        raise SaekitError(f"Python documentation sources not found at {PYTHON_DOCS_GLOB}; {INSTALL_HINT}")
    return max(roots, key=version)


# --- fortunes


def _fortunes() -> list[Document]:
    if not (FORTUNES_DIR / "fortunes").is_file():
        raise SaekitError(f"fortune cookie files not found in {FORTUNES_DIR}; {INSTALL_HINT}")
    docs: list[Document] = []
    for name, path in _fortune_files(FORTUNES_DIR):
        entries = fortune_entries(path.read_text(encoding="utf-8", errors="replace"))
        for n, group in enumerate(group_pieces(entries, FORTUNE_GROUP_CHARS)):
            docs.append(Document("fortunes", f"fortunes/{name}#{n}", group))
    return docs


def _fortune_files(root: Path) -> list[tuple[str, Path]]:
    """Top-level cookie files (subdirectories such as off/ are skipped); plain files win over .u8 twins.

    Language packages (fortunes-it) add top-level links into their own subdirectory; those are skipped too,
    so the default corpus is the same English text whichever fortune packages are installed."""
    files: dict[str, Path] = {}
    top = root.resolve()
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix not in ("", ".u8") or path.resolve().parent != top:
            continue
        name = path.name.removesuffix(".u8")
        if name in FORTUNE_EXCLUDED or (name in files and path.suffix == ".u8"):
            continue
        files[name] = path
    return sorted(files.items())


def fortune_entries(text: str) -> list[str]:
    """The entries of one fortune file (separated by ``%`` lines), overstrikes and control characters removed."""
    text = re.sub(r".\x08", "", text)  # old files underline/bold by overstriking: "_\bx"
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    entries = re.split(r"^%[ \t]*$", text, flags=re.M)
    return [e.strip("\n").rstrip() for e in entries if e.strip()]
