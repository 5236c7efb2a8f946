"""Load text corpora (the embedded default, user files, Hugging Face datasets) as a list of documents."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from saekit.errors import SaekitError

INSTALL_HINT = "run `bash scripts/install_corpus.sh` (installs python3-doc, bible-kjv and fortunes)"
LONG_TEXT_CHARS = 20_000  # a .txt file longer than this is split into chunks ...
CHUNK_CHARS = 10_000  # ... of about this many characters, on blank-line paragraph boundaries
FORTUNE_GROUP_CHARS = 2_000
MIN_DOC_PROSE_CHARS = 200
PYTHON_DOCS_GLOB = "/usr/share/doc/python3.*/html/_sources"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_EXCLUDED = frozenset({"art", "ascii-art"})


@dataclass(frozen=True)
class Document:
    """One document of a corpus: where it came from, a stable unique id, and its text."""

    source: str
    doc_id: str
    text: str


# --- public API


def load_corpus(spec: str, text_field: str = "text") -> list[Document]:
    """Load ``spec``: "default", a .txt file, a directory of .txt files, a .jsonl file, or "hf:NAME[:SPLIT]".

    "hf:NAME:CONFIG:SPLIT" is also accepted for datasets that need a configuration name.
    """
    if not spec.strip():
        raise SaekitError("corpus spec is empty; pass 'default', a .txt/.jsonl file, a directory or hf:NAME")
    if spec == "default":
        docs = default_corpus()
    elif spec.startswith("hf:"):
        docs = _load_hf(spec, text_field)
    else:
        docs = _load_path(Path(spec).expanduser(), text_field)
    return _require_nonempty(docs, spec)


def default_corpus() -> list[Document]:
    """The embedded English corpus: the King James Bible, the Python documentation and fortune cookies."""
    return [*_kjv_bible(), *_python_docs(), *_fortunes()]


def split_documents(
    docs: list[Document], eval_fraction: float = 0.05, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Split into (train, eval) by a seeded hash of each doc_id, so the assignment of a document is stable."""
    if not 0.0 < eval_fraction < 1.0:
        raise SaekitError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    train: list[Document] = []
    held_out: list[Document] = []
    for doc in docs:
        (held_out if _unit_hash(f"{seed}:{doc.doc_id}") < eval_fraction else train).append(doc)
    if not held_out:
        raise SaekitError(
            f"eval split of {len(docs)} documents is empty at eval_fraction={eval_fraction}; "
            "raise eval_fraction or add documents"
        )
    if not train:
        raise SaekitError(
            f"train split of {len(docs)} documents is empty at eval_fraction={eval_fraction}; "
            "lower eval_fraction or add documents"
        )
    return train, held_out


def corpus_summary(docs: Iterable[Document]) -> dict:
    """Total and per-source counts: {"documents", "characters", "sources": {source: {...}}}."""
    sources: dict[str, dict[str, int]] = {}
    for doc in docs:
        entry = sources.setdefault(doc.source, {"documents": 0, "characters": 0})
        entry["documents"] += 1
        entry["characters"] += len(doc.text)
    return {
        "documents": sum(s["documents"] for s in sources.values()),
        "characters": sum(s["characters"] for s in sources.values()),
        "sources": sources,
    }


# --- helpers


def _unit_hash(key: str) -> float:
    """Map a string to [0, 1) with sha256 (stable across runs and platforms, unlike hash())."""
    return (int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") >> 11) / 2.0**53


def _require_nonempty(docs: list[Document], spec: str) -> list[Document]:
    docs = [doc for doc in docs if doc.text.strip()]
    if not docs:
        raise SaekitError(
            f"corpus {spec!r} is empty (no documents with text); point it at files that contain text"
        )
    return docs


# --- user files


def _load_path(path: Path, text_field: str) -> list[Document]:
    if not path.exists():
        raise SaekitError(f"corpus path not found: {path}; give an existing .txt/.jsonl file or directory")
    if path.is_dir():
        return _load_dir(path)
    if path.suffix == ".jsonl":
        return _load_jsonl(path, text_field)
    if path.suffix == ".txt":
        return _text_documents(path.name, path.name, _read_text(path))
    raise SaekitError(
        f"unsupported corpus file {path} (want .txt or .jsonl, a directory, 'default' or 'hf:NAME[:SPLIT]')"
    )


def _load_dir(root: Path) -> list[Document]:
    docs: list[Document] = []
    files = sorted(
        (p for p in root.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()
    )
    for path in files:
        rel = f"{root.name}/{path.relative_to(root).as_posix()}"
        docs.extend(_text_documents(root.name, rel, _read_text(path)))
    return docs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SaekitError(f"{path} is not UTF-8 text ({err}); convert it, e.g. with iconv -t UTF-8") from err


def _text_documents(source: str, doc_id: str, text: str) -> list[Document]:
    """One document per file, or ~CHUNK_CHARS chunks with ids ``doc_id#n`` when the file is long."""
    if len(text) <= LONG_TEXT_CHARS:
        return [Document(source, doc_id, text)]
    return [
        Document(source, f"{doc_id}#{n}", chunk) for n, chunk in enumerate(_chunk_text(text, CHUNK_CHARS))
    ]


def _chunk_text(text: str, size: int) -> list[str]:
    """Group blank-line paragraphs into chunks of about ``size`` characters (oversized paragraphs are cut)."""
    return _group(_paragraph_pieces(text, size), size)


def _group(pieces: Iterable[str], size: int) -> list[str]:
    """Join consecutive pieces with blank lines into groups of >= ``size`` characters (last may be short)."""
    groups: list[str] = []
    current: list[str] = []
    length = 0
    for piece in pieces:
        length += len(piece) + (2 if current else 0)
        current.append(piece)
        if length >= size:
            groups.append("\n\n".join(current))
            current, length = [], 0
    if current:
        groups.append("\n\n".join(current))
    return groups


def _paragraph_pieces(text: str, size: int) -> Iterator[str]:
    for para in re.split(r"\n[ \t]*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        while len(para) > 2 * size:  # no blank lines for a long stretch: cut at whitespace near ``size``
            cut = max(para.rfind("\n", 0, size), para.rfind(" ", 0, size))
            cut = cut if cut > size // 2 else size
            yield para[:cut]
            para = para[cut:].lstrip()
        yield para


def _load_jsonl(path: Path, text_field: str) -> list[Document]:
    docs: list[Document] = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            docs.append(
                Document(path.name, f"{path.name}#{line_no}", _jsonl_text(path, line_no, line, text_field))
            )
    return docs


def _jsonl_text(path: Path, line_no: int, line: str, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SaekitError(
            f"{path} line {line_no} is not valid JSON ({err.msg}); fix or remove that line"
        ) from err
    if not isinstance(record, dict) or text_field not in record:
        raise SaekitError(
            f"{path} line {line_no} has no {text_field!r} field; add it or pass the right text_field name"
        )
    if not isinstance(record[text_field], str):
        raise SaekitError(
            f"{path} line {line_no}: field {text_field!r} is not a string; store the text as a string"
        )
    return record[text_field]


def _load_hf(spec: str, text_field: str) -> list[Document]:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise SaekitError(f"bad corpus spec {spec!r}; use hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    name, config, split = (
        parts[0],
        (parts[1] if len(parts) == 3 else None),
        (parts[-1] if len(parts) > 1 else "train"),
    )
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise SaekitError(
            "hf: corpora need the datasets library; install it with `pip install saekit[hf]`"
        ) from err
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types (network, missing split, missing config)
        raise SaekitError(f"could not load Hugging Face dataset {spec!r}: {err}".splitlines()[0]) from err
    if text_field not in dataset.column_names:
        raise SaekitError(
            f"dataset {spec!r} has no {text_field!r} column (has {dataset.column_names}); pass text_field"
        )
    texts = dataset[text_field]
    return [
        Document(name, f"{name}/{split}#{i}", text) for i, text in enumerate(texts) if isinstance(text, str)
    ]


# --- KJV Bible

_BOOKS = tuple(  # canonical order; `bible -f` abbreviates them (Ge, Exo, ..., Rev) in this order
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


def _kjv_bible() -> list[Document]:
    """One document per chapter, verses joined into one prose paragraph without their references."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in _bible_dump().splitlines():
        match = _VERSE.match(line.strip())
        if match:
            abbrev, chapter, _verse, text = match.groups()
            chapters.setdefault((abbrev, int(chapter)), []).append(text.strip())
    abbrevs = list(dict.fromkeys(abbrev for abbrev, _ in chapters))
    if len(abbrevs) != len(_BOOKS):
        raise SaekitError(
            f"the `bible` command printed {len(abbrevs)} books, not 66; reinstall: {INSTALL_HINT}"
        )
    names = dict(zip(abbrevs, _BOOKS, strict=True))
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


def _python_docs() -> list[Document]:
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


_SKIP_BODY = frozenset(
    "index code-block code sourcecode doctest testcode testsetup testcleanup testoutput productionlist "
    "toctree include literalinclude tabularcolumns parsed-literal image figure miscnews limited-api-list "
    "audit-event-table audit-event sectionauthor moduleauthor contents raw csv-table list-table table "
    "highlight module currentmodule program".split()
)
_PROSE_ARGUMENT = frozenset(
    "note warning seealso important caution tip hint attention danger error impl-detail rubric topic "
    "sidebar admonition epigraph".split()
)
_VERSIONED = frozenset("versionadded versionchanged deprecated deprecated-removed".split())
_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:.-]+)::(.*)$")
_EXPLICIT_MARKUP = re.compile(r"^\s*\.\.(\s|$)")  # comments, link targets, footnotes, substitutions
_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+.:_<>])\1{2,}\s*$")
_GRID_BORDER = re.compile(r"^\s*\+[-=+]+\+\s*$")
_SIMPLE_BORDER = re.compile(r"^\s*=+( +=+)+\s*$")
_OPTION_LINE = re.compile(r"^\s*:[\w-]+:(\s|$)")
_FIELD = re.compile(r"^:([\w -]+):\s+")
_BULLET = re.compile(r"^(\s*)([*+-]|#\.|\d+\.)(\s+)")
_VERSION_TOKEN = re.compile(r"^\d+(\.\d+)*,?$")


def rst_to_prose(text: str) -> str:
    """Turn reStructuredText into plain prose paragraphs (markup, directives, code and tables removed)."""
    reader = _RstReader()
    for line in _blank_tables(text.expandtabs(8).splitlines()):
        reader.feed(line)
    paragraphs = (_inline_to_text(" ".join(lines)) for lines in reader.finish())
    return "\n\n".join(p for p in paragraphs if p)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _blank_tables(lines: list[str]) -> list[str]:
    """Replace grid tables and simple tables by blank lines (their cells are rarely prose)."""
    out = list(lines)
    i = 0
    while i < len(out):
        end = _table_end(out, i)
        out[i:end] = [""] * (end - i)
        i = max(end, i + 1)
    return out


def _table_end(lines: list[str], start: int) -> int:
    """Index just past the table starting at ``start``, or ``start`` when no table starts there."""
    end = start
    if _GRID_BORDER.match(lines[start]):
        while end < len(lines) and lines[end].lstrip().startswith(("+", "|")):
            end += 1
    elif _SIMPLE_BORDER.match(lines[start]):  # ends at a border line followed by a blank line (or EOF)
        for i in range(start + 1, len(lines)):
            if _SIMPLE_BORDER.match(lines[i]) and (i + 1 == len(lines) or not lines[i + 1].strip()):
                return i + 1
    return end


class _RstReader:
    """Line-by-line RST block parser that keeps prose lines, grouped into paragraphs."""

    def __init__(self) -> None:
        self.paragraphs: list[list[str]] = []
        self.current: list[str] = []
        self.bullet_indent: int | None = None  # indent of the list marker that opened the current paragraph
        self.skip_deeper_than: int | None = None  # skip blank lines and lines indented more than this
        self.skip_to_blank = False  # skip until the next blank line (doctests, signature continuations)
        self.drop_options = False  # right after a directive line: drop its ":option: value" lines

    def finish(self) -> list[list[str]]:
        self._end_paragraph()
        return self.paragraphs

    def feed(self, line: str) -> None:
        if self._skipping(line):
            return
        if not line.strip():
            self._end_paragraph()
            return
        line = self._strip_bullet(line)
        if _EXPLICIT_MARKUP.match(line):
            self._end_paragraph()
            self._explicit_markup(line)
        elif _UNDERLINE.match(line):  # section title adornment: the title stays a paragraph of its own
            self._end_paragraph()
        elif line.lstrip().startswith(">>>"):
            self.skip_to_blank = True
        else:
            self._text(line)

    def _skipping(self, line: str) -> bool:
        stripped = line.strip()
        if self.skip_deeper_than is not None:
            if not stripped or _indent(line) > self.skip_deeper_than:
                return True
            self.skip_deeper_than = None
        if self.skip_to_blank and stripped:
            return True
        self.skip_to_blank = False
        if self.drop_options and _OPTION_LINE.match(line):
            return True
        self.drop_options = False
        return False

    def _strip_bullet(self, line: str) -> str:
        """A list marker opens a new paragraph (after a blank line or in a list); it becomes spaces."""
        bullet = _BULLET.match(line)
        if not bullet or (self.current and self.bullet_indent != len(bullet[1])):
            return line
        self._end_paragraph()
        self.bullet_indent = len(bullet[1])
        return " " * len(bullet[0]) + line[len(bullet[0]) :]

    def _end_paragraph(self) -> None:
        if self.current:
            self.paragraphs.append(self.current)
        self.current = []
        self.bullet_indent = None

    def _explicit_markup(self, line: str) -> None:
        directive = _DIRECTIVE.match(line)
        if directive is None:  # comment, link target, footnote, substitution: drop with its indented body
            self.skip_deeper_than = _indent(line)
            return
        name, argument = directive[1].lower(), directive[2].split()
        self.drop_options = True
        if name in _SKIP_BODY:
            self.skip_deeper_than = _indent(line)
        elif name in _VERSIONED:
            while argument and _VERSION_TOKEN.match(argument[0]):
                argument.pop(0)
            self.current.extend(argument)
        elif name in _PROSE_ARGUMENT:
            self.current.extend(argument)
        else:  # object descriptions (function, class, ...): drop the signature lines, keep the body
            self.skip_to_blank = True

    def _text(self, line: str) -> None:
        stripped = line.strip()
        if stripped.endswith("::"):  # a literal block follows: skip everything indented deeper
            self.skip_deeper_than = _indent(line)
            stripped = (
                stripped[:-2].rstrip() if stripped == "::" or stripped.endswith(" ::") else stripped[:-1]
            )
        stripped = _FIELD.sub(r"\1: ", stripped)
        if stripped:
            self.current.append(stripped)
        if self.skip_deeper_than is not None:  # the literal block ends this paragraph
            self._end_paragraph()


_INLINE = re.compile(
    r"``(?P<literal>.+?)``"
    r"|\\(?P<escaped>.)"
    r"|(?P<role_name>(?::[A-Za-z][\w.+-]*)+):`(?P<role>[^`]+)`"
    r"|`(?P<link>[^`]+)`__?"
    r"|`(?P<interpreted>[^`]+)`"
    r"|\*\*(?P<strong>[^\s*](?:.*?[^\s*])?)\*\*"
    r"|(?<![\w*\\])\*(?P<emphasis>(?:\\.|[^\s*\\])(?:(?:\\.|[^*\\])*?(?:\\.|[^\s*\\]))?)\*(?![\w*])"
)
_FOOTNOTE_REF = re.compile(r"\s*\[(#\w*|\d+|\*)\]_")
_TARGET = re.compile(r"^(.*?)\s*<[^<>]+>$", re.S)


def _inline_to_text(text: str) -> str:
    text = _FOOTNOTE_REF.sub("", text.replace("\\ ", ""))  # "\ " is RST's zero-width separator
    text = _INLINE.sub(_inline_replacement, text)
    return re.sub(r"\s+", " ", text).strip()


def _inline_replacement(match: re.Match) -> str:
    if match["role"] is not None:
        return _role_text(match["role_name"], match["role"])
    if match["link"] is not None:
        title = _TARGET.match(match["link"])
        return title[1] if title and title[1] else match["link"]
    if match["emphasis"] is not None:
        return re.sub(r"\\(.)", r"\1", match["emphasis"])
    for group in ("literal", "escaped", "interpreted", "strong"):
        if match[group] is not None:
            return match[group]
    return match[0]


def _role_text(role_name: str, content: str) -> str:
    titled = _TARGET.match(content)
    if titled and titled[1]:
        return titled[1]
    content = content.lstrip("!")
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    if role_name in (":pep", ":rfc"):
        return f"{role_name[1:].upper()} {content}"
    return content


# --- fortunes


def _fortunes() -> list[Document]:
    if not (FORTUNES_DIR / "fortunes").is_file():
        raise SaekitError(f"fortune cookie files not found in {FORTUNES_DIR}; {INSTALL_HINT}")
    docs: list[Document] = []
    for name, path in _fortune_files(FORTUNES_DIR):
        entries = _fortune_entries(path.read_text(encoding="utf-8", errors="replace"))
        for n, group in enumerate(_group(entries, FORTUNE_GROUP_CHARS)):
            docs.append(Document("fortunes", f"fortunes/{name}#{n}", group))
    return docs


def _fortune_files(root: Path) -> list[tuple[str, Path]]:
    """Top-level cookie files (subdirectories such as off/ are skipped); plain files win over .u8 twins."""
    files: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix not in ("", ".u8"):
            continue
        name = path.name.removesuffix(".u8")
        if name in FORTUNE_EXCLUDED or (name in files and path.suffix == ".u8"):
            continue
        files[name] = path
    return sorted(files.items())


def _fortune_entries(text: str) -> list[str]:
    text = re.sub(r".\x08", "", text)  # old files underline/bold by overstriking: "_\bx"
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    entries = re.split(r"^%[ \t]*$", text, flags=re.M)
    return [e.strip("\n").rstrip() for e in entries if e.strip()]
