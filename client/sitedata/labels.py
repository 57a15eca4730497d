"""A site's labels: `labels.csv` and class-named folders, resolved against the
federation's class list.

labels.csv has a key column, `SOPInstanceUID` (preferred when both are present: files are
matched by their tags, never by where they lie) or `path` (relative to the site folder,
POSIX separators), and a `label` column holding a class name or an integer index into the
class list. Header names match case-insensitively; comma, semicolon and tab separated
files are read (spreadsheets export all three). The file is UTF-8 (with or without a
byte-order mark) or UTF-16 with its byte-order mark (a spreadsheet's "Unicode text");
anything else is refused in one line naming the file, never guessed: a wrong guess would
silently turn a class name into another. Rows are numbered as a spreadsheet shows them:
the header is row 1.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LABELS_FILE = "labels.csv"
KEY_COLUMNS = ("SOPInstanceUID", "path")
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class LabelRow:
    row: int  # spreadsheet row number, header = 1
    key: str
    label: str


@dataclass(frozen=True)
class LabelTable:
    key_column: str  # "SOPInstanceUID" or "path"
    rows: tuple[LabelRow, ...]


def check_classes(classes: Sequence[str]) -> None:
    """A class list labels can be resolved against: at least one name."""
    if not classes:
        raise ValueError("classes: expected at least one class name, got none")


def resolve_label(text: str, classes: Sequence[str]) -> int | None:
    """The class index a label names: an exact class name, a class name differing only in
    case or surrounding spaces, or an integer index; None when it names no class."""
    value = text.strip()
    if value in classes:
        return list(classes).index(value)
    folded = [c.casefold() for c in classes]
    if folded.count(value.casefold()) == 1:
        return folded.index(value.casefold())
    try:
        index = int(value)
    except ValueError:
        return None
    return index if 0 <= index < len(classes) else None


def normalise_relpath(text: str) -> str:
    """A path key as the scan writes relative paths: POSIX separators, no leading './'."""
    parts = [p for p in text.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise ValueError(f"{path}: cannot be read (permission denied); let this user read it") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder; expected a CSV file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif b"\x00" in raw[:200]:
        raise ValueError(f"{path}: looks like UTF-16 text without a byte-order mark; save it as "
                         "UTF-8 (\"CSV UTF-8\" in a spreadsheet)")
    else:
        # utf-8-sig drops the byte-order mark spreadsheet programs put first.
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text (byte "
            f"0x{raw[exc.start]:02x} at offset {exc.start}, e.g. Latin-1 or Windows-1252); save "
            "it as UTF-8 (\"CSV UTF-8\" in a spreadsheet)"
        ) from None


def read_labels_csv(path: str | os.PathLike[str]) -> LabelTable:
    """Read labels.csv.

    Raises ValueError, naming the file and what was expected, when the file cannot be
    read, is not UTF-8 / UTF-16 text, or has no key column or no label column.
    """
    path = Path(path)
    text = _read_text(path)
    first_line = text.splitlines()[0] if text.strip() else ""
    delimiter = ","
    if "," not in first_line:
        delimiter = ";" if ";" in first_line else ("\t" if "\t" in first_line else ",")
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = next(reader, [])
    columns = {name.strip().casefold(): i for i, name in enumerate(header)}
    found = ", ".join(repr(h.strip()) for h in header) or "none"
    key_column = next((k for k in KEY_COLUMNS if k.casefold() in columns), None)
    if key_column is None:
        raise ValueError(
            f"{path}: no key column: expected a 'SOPInstanceUID' or a 'path' column, "
            f"found columns {found}"
        )
    if LABEL_COLUMN not in columns:
        raise ValueError(f"{path}: no 'label' column: expected one, found columns {found}")
    key_at, label_at = columns[key_column.casefold()], columns[LABEL_COLUMN]
    rows = []
    for number, record in enumerate(reader, start=2):
        if not any(cell.strip() for cell in record):
            continue  # blank lines, common at the end of exported files
        key = record[key_at].strip() if key_at < len(record) else ""
        label = record[label_at].strip() if label_at < len(record) else ""
        if key_column == "path":
            key = normalise_relpath(key)
        rows.append(LabelRow(number, key, label))
    return LabelTable(key_column, tuple(rows))
