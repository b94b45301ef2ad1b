"""Tiny ``.xlsx`` workbooks written with the standard library, for recipient-file tests.

An ``.xlsx`` file is a zip of XML parts; one sheet of inline strings and numbers needs
five of them. Writing them here keeps the tests free of a spreadsheet-writing package.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

_CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml"
 ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>
{sheets}
</Types>"""
_SHEET_TYPE = (
    '<Override PartName="/xl/worksheets/sheet{n}.xml" ContentType='
    '"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
)
_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1"
 Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
 Target="xl/workbook.xml"/>
</Relationships>"""
_WORKBOOK = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"
 xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">
<sheets>{sheets}</sheets>
</workbook>"""
_WORKBOOK_RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
{rels}
</Relationships>"""
_SHEET_REL = (
    '<Relationship Id="rId{n}" Target="worksheets/sheet{n}.xml" Type='
    '"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"/>'
)
_SHEET = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">
<sheetData>{rows}</sheetData>
</worksheet>"""

Cell = str | int | float | None


def _column(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _cell(ref: str, value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float):
        return f'<c r="{ref}"><v>{value}</v></c>'
    return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{escape(value)}</t></is></c>'


def _sheet(rows: Sequence[Sequence[Cell]]) -> str:
    out = []
    for r, row in enumerate(rows, start=1):
        cells = "".join(_cell(f"{_column(c)}{r}", v) for c, v in enumerate(row))
        out.append(f'<row r="{r}">{cells}</row>')
    return _SHEET.format(rows="".join(out))


def write_xlsx(
    path: Path, rows: Sequence[Sequence[Cell]], **more: Sequence[Sequence[Cell]]
) -> Path:
    """Write ``rows`` (the header first) as the first sheet, "Sheet1"; ``more`` adds sheets
    by name. A ``None`` cell is left out, as Excel leaves out an empty cell."""
    sheets = {"Sheet1": rows, **more}
    names = list(sheets)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        types = "\n".join(_SHEET_TYPE.format(n=n) for n in range(1, len(names) + 1))
        z.writestr("[Content_Types].xml", _CONTENT_TYPES.format(sheets=types))
        z.writestr("_rels/.rels", _RELS)
        entries = "".join(
            f'<sheet name="{escape(name)}" sheetId="{n}" r:id="rId{n}"/>'
            for n, name in enumerate(names, start=1)
        )
        z.writestr("xl/workbook.xml", _WORKBOOK.format(sheets=entries))
        rels = "\n".join(_SHEET_REL.format(n=n) for n in range(1, len(names) + 1))
        z.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS.format(rels=rels))
        for n, name in enumerate(names, start=1):
            z.writestr(f"xl/worksheets/sheet{n}.xml", _sheet(sheets[name]))
    return path
