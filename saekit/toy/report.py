"""Markdown for the toy experiments' summary.md files.

Tables are :func:`saekit.render.markdown_table`: floats with three decimals, None as ``-``, strings as
formatted by the caller, every cell escaped for markdown.
"""

from __future__ import annotations

from saekit.render import markdown_table

__all__ = ["markdown_table"]
