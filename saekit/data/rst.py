"""Turn reStructuredText into plain prose: ``rst_to_prose`` drops markup, directives, code blocks and tables.

A small line-by-line block parser (``_RstReader``) keeps prose lines grouped into paragraphs, then inline markup
(roles, literals, links, emphasis, footnote references) is reduced to its text. It is used by
``saekit.data.debian`` to read the Python documentation sources into the default corpus.
"""

from __future__ import annotations

import re

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
