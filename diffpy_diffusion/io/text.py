"""Low-level reading of text column files with precise, one-line errors.

Shared by all pattern readers.  Handles UTF-8 with or without BOM, latin-1,
CRLF/CR line ends, tabs, comma/semicolon/whitespace separators, comment lines
(``#``, ``!``, ``%``, ``;``, ``//``), SPEC-style ``#L`` column labels and
"start data" markers, FIT2D ``.chi`` point counts and ``start step end`` step
scans.  Every error names the file and the 1-based line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputFileError, ResourceLimitError

#: Largest pattern file we read (bytes); a safety cap, not a format limit.
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Largest number of data rows: see :data:`diffpy_diffusion.limits.PATTERN_POINTS` (env-configurable).

_COMMENT_PREFIXES = ("#", "!", "%", ";", "//", "'")
_SPLIT = re.compile(r"[\s,;]+")
_SPLIT_CSV = re.compile(r"\s*[,;]\s*|\s+")
_START_MARKER = re.compile(r"^\s*#*\s*(?:start\s+data|data\s*:?\s*$|end\s+of\s+header)", re.I)
_SPEC_LABELS = re.compile(r"^\s*#\s*L\b\s*(.*)$")


@dataclass
class TextTable:
    """The numeric block of a text file plus its header."""

    path: str
    data: np.ndarray  # (n_rows, n_cols) float
    linenos: np.ndarray  # (n_rows,) 1-based line number of each row
    header: list[str] = field(default_factory=list)  # header/comment lines, comment prefix kept
    names: list[str] | None = None  # column labels when the file has them
    step_scan: tuple[float, float, float] | None = None  # (start, step, end) of a step scan (y only)

    @property
    def header_text(self) -> str:
        return "\n".join(self.header)


def read_checked_bytes(path: str | Path) -> bytes:
    """The file's bytes, refusing a missing file, a directory and a file over
    :data:`MAX_FILE_BYTES` with one-line errors (every pattern reader starts here)."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "no such file")
    if p.is_dir():
        raise InputFileError(p, "is a directory, expected a data file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ResourceLimitError(f"{p}: file is {size / 2**20:.0f} MiB, larger than the "
                                 f"{MAX_FILE_BYTES / 2**20:.0f} MiB limit for pattern files")
    return p.read_bytes()


def read_text(path: str | Path) -> str:
    """Read a text file, rejecting empty and binary files with a clear error."""
    p = Path(path)
    raw = read_checked_bytes(p)
    if not raw.strip(b" \t\r\n\f\v,;"):
        raise InputFileError(p, "file is empty; expected columns of numbers", line=1)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    head = raw[:65536]
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise InputFileError(p, "binary data (NUL byte); expected a text file with columns of numbers",
                             line=line)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    ctrl = sum(1 for ch in text[:65536] if ord(ch) < 32 and ch not in "\r\n\t\f\v")
    if ctrl > max(8, 0.01 * min(len(text), 65536)):
        raise InputFileError(p, "binary data (control characters); expected a text file with "
                             "columns of numbers", line=1)
    return text


def _is_comment(s: str) -> bool:
    return s.startswith(_COMMENT_PREFIXES)


def _tokens(s: str, csv: bool) -> list[str]:
    s = s.strip()
    if not s:
        return []
    return [t for t in (_SPLIT_CSV if csv else _SPLIT).split(s) if t != ""]


def _as_float(tok: str) -> float | None:
    try:
        return float(tok)
    except ValueError:
        t = tok.replace("D", "E").replace("d", "e")  # Fortran exponents: 1.0D+03
        try:
            return float(t)
        except ValueError:
            return None


def _numeric(tokens: list[str]) -> list[float] | None:
    out = []
    for t in tokens:
        v = _as_float(t)
        if v is None:
            return None
        out.append(v)
    return out


def parse_table(path: str | Path, text: str | None = None, *, csv: bool = False) -> TextTable:
    """Split a text file into header lines and a rectangular numeric block.

    Rules, in order:

    1. If the file has SPEC ``#L`` label lines or a ``start data`` marker,
       data start after the last of them (PDFgetX2/3, xPDFsuite, PDFgetN);
       the labels of the last ``#L`` become the column names.
    2. Otherwise the header is everything before the first all-numeric line.
    3. Inside the data block, comment lines and blank lines are skipped; every
       other line must hold the same number of numbers as the first data row.
    4. A FIT2D point-count line (one integer equal to the number of rows that
       follow) and a ``start step end`` first line followed by one column of
       counts are recognised.

    Raises
    ------
    InputFileError
        Empty/binary file, text in a numeric column, ragged rows, non-finite
        values (NaN, inf), a single column without a step-scan header, fewer
        than 3 data points.  Always with the line number.
    """
    path = str(path)
    if text is None:
        text = read_text(path)
    from ..limits import PATTERN_POINTS, check_pattern_points

    max_rows = PATTERN_POINTS.value()
    # before splitting into lines: a file of millions of tiny lines must not blow up memory
    n_breaks = max(text.count("\n"), text.count("\r"))
    if n_breaks > 2 * max_rows + 10_000:
        check_pattern_points(n_breaks // 2, f"{path} ({n_breaks:,} lines)")
    lines = text.splitlines()
    n_lines = len(lines)

    start = 0
    names: list[str] | None = None
    for i, line in enumerate(lines):
        m = _SPEC_LABELS.match(line)
        if m:
            start = i + 1
            names = [t for t in re.split(r"\s+", m.group(1).strip()) if t] or None
        elif _START_MARKER.match(line):
            start = i + 1
            names = None

    header: list[str] = list(lines[:start])
    # find first numeric row at or after `start`
    first = None
    for i in range(start, n_lines):
        s = lines[i].strip()
        if not s or _is_comment(s) or not _tokens(s, csv):
            header.append(lines[i])
            continue
        if _numeric(_tokens(s, csv)) is not None:
            first = i
            break
        header.append(lines[i])
    if first is None:
        last = n_lines if n_lines else 1
        raise InputFileError(path, "no rows of numbers found; expected columns such as "
                             "'x y' after the header", line=last)

    if names is None:
        # column labels: last non-blank header line, if it splits into words
        for h in reversed(header):
            hs = h.strip().lstrip("#!%;/'").strip()
            if hs:
                toks = _tokens(hs, csv)
                if toks and _numeric(toks) is None and len(toks) <= 12:
                    names = toks
                break

    rows: list[list[float]] = []
    linenos: list[int] = []
    first_vals = _numeric(_tokens(lines[first], csv))
    ncols = len(first_vals)
    step_scan = None
    free = False  # step scan with several counts per line (FullProf free format)
    i0 = first
    # FIT2D .chi point count / step-scan header: decide by the next data row
    nxt = None
    for j in range(first + 1, n_lines):
        s = lines[j].strip()
        if s and not _is_comment(s) and _tokens(s, csv):
            nxt = (j, _tokens(s, csv))
            break
    if nxt is not None and ncols in (1, 3) and len(nxt[1]) != ncols:
        nxt_vals = _numeric(nxt[1])
        if nxt_vals is not None:
            if ncols == 1 and float(first_vals[0]).is_integer():
                header.append(lines[first])  # point count; verified below
                i0 = nxt[0]
                ncols = len(nxt_vals)
            elif ncols == 3:
                a, b, c = first_vals
                if b > 0 and c > a and all(math.isfinite(v) for v in first_vals):
                    step_scan = (a, b, c)
                    header.append(lines[first])
                    i0 = nxt[0]
                    free = len(nxt_vals) != 1
                    ncols = 1
    for i in range(i0, n_lines):
        s = lines[i].strip()
        if not s or _is_comment(s):
            continue
        toks = _tokens(s, csv)
        if not toks:
            continue
        vals = []
        for k, t in enumerate(toks):
            v = _as_float(t)
            if v is None:
                raise InputFileError(path, f"expected a number in column {k + 1}, found {t!r}", line=i + 1)
            vals.append(v)
        if free:
            for k, v in enumerate(vals):
                if not math.isfinite(v):
                    raise InputFileError(path, f"non-finite value {toks[k]!r}; remove or replace NaN/inf values",
                                         line=i + 1)
                rows.append([v])
                linenos.append(i + 1)
            if len(rows) > max_rows:
                check_pattern_points(len(rows), str(path))
            continue
        if len(vals) != ncols:
            ref_line = linenos[0] if linenos else i0 + 1
            raise InputFileError(path, f"expected {ncols} numbers per row (as in line {ref_line}),"
                                 f" found {len(vals)}", line=i + 1)
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                raise InputFileError(path, f"non-finite value {toks[k]!r} in column {k + 1}; "
                                     "remove or replace NaN/inf rows", line=i + 1)
        rows.append(vals)
        linenos.append(i + 1)
        if len(rows) > max_rows or len(rows) * ncols > 4 * max_rows:
            check_pattern_points(max(len(rows), len(rows) * ncols // 4), str(path))
    data = np.asarray(rows, dtype=float).reshape(len(rows), ncols)
    if i0 != first and step_scan is None:
        count = int(first_vals[0])
        if count != len(rows):
            # not a point count after all: a genuine single column
            raise InputFileError(path, f"expected 1 number per row (as in line {first + 1}), "
                                 f"found {ncols}", line=i0 + 1)
    if step_scan is None and ncols == 1:
        raise InputFileError(path, "only one column of numbers; expected x and y columns "
                             "(or a 'start step end' first line for a step scan)", line=first + 1)
    if len(rows) < 3:
        raise InputFileError(path, f"only {len(rows)} data row(s); expected at least 3",
                             line=linenos[-1] if linenos else first + 1)
    return TextTable(path=path, data=data, linenos=np.asarray(linenos), header=header,
                     names=names, step_scan=step_scan)
