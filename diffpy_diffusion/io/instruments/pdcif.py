"""IUCr powder CIF (pdCIF): ``_pd_meas_*`` / ``_pd_proc_*`` loops with their radiation.

Follows the pdCIF dictionary (``cif_pd.dic``, DDL1; DDLm names such as
``_pd_meas.2theta_scan`` are read as their DDL1 aliases):

- *intensity*, first found of ``_pd_meas_counts_total``, ``_pd_meas_intensity_total``,
  ``_pd_proc_intensity_total``, ``_pd_proc_intensity_net`` (calculated ``_pd_calc_*``
  values are never read as data);
- *uncertainty*: the s.u. in parentheses (``1234(35)``), else ``_pd_proc_ls_weight``
  (σ = 1/√w; points of weight 0 are excluded by definition and dropped), else for
  ``_pd_meas_counts_*`` √counts -- the dictionary says counts carry no s.u. because it is
  the square root of the counts (σ = 1 for a zero count);
- *x*: ``_pd_proc_2theta_corrected`` or ``_pd_meas_2theta_scan`` in the same loop, or
  ``_pd_proc_d_spacing`` / ``_pd_proc_recip_len_Q`` (read as Q = 2π/d in Å⁻¹), or the
  evenly spaced ``_pd_{meas,proc}_2theta_range_{min,max,inc}``; time of flight is refused;
- *radiation*: ``_diffrn_radiation_wavelength`` (a single value, or a loop with
  ``_diffrn_radiation_wavelength_id`` and ``_diffrn_radiation_wavelength_wt``: the two
  largest weights are Kα1 and Kα2, the ratio of their weights the Kα2/Kα1 ratio; weight-0
  "dummy" ids are skipped), else ``_pd_proc_wavelength``, else the anode named by
  ``_diffrn_radiation_type`` (``'Cu K\\a'``); ``_diffrn_radiation_probe`` neutron/x-ray.
  Looked up in the data's block first, then in the other blocks.

The CIF 1.1 syntax is tokenised here (quoted strings, ``;`` text fields, ``loop_``,
comments) so that every error names the line; PyCifRW reports character offsets only
and is about 20× slower on a 20,000-point loop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InputFileError
from ...limits import PATTERN_POINTS, check_pattern_points
from ..text import read_text
from .common import FileWavelength, check_wavelength, finish, tube_wavelength

EXTENSIONS = (".cif", ".pdcif")

Y_TAGS = ("_pd_meas_counts_total", "_pd_meas_intensity_total", "_pd_proc_intensity_total",
          "_pd_proc_intensity_net")
X_TAGS = ("_pd_proc_2theta_corrected", "_pd_meas_2theta_scan")
_RESERVED = ("data_", "loop_", "save_", "global_", "stop_")
_TOKEN = re.compile(r"""(?P<q>'(?:[^']|'(?=\S))*'(?=\s|$)|"(?:[^"]|"(?=\S))*"(?=\s|$))|(?P<c>\#.*)|(?P<w>\S+)""")
_NUM_SU = re.compile(r"^([-+]?)(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+))?(?:\((\d+)\))?$")


@dataclass
class Value:
    text: str
    line: int
    quoted: bool = False

    @property
    def missing(self) -> bool:
        return not self.quoted and self.text in ("?", ".")


@dataclass
class Loop:
    tags: list[str]
    line: int
    values: list[Value] = field(default_factory=list)

    def column(self, tag: str) -> list[Value]:
        k = self.tags.index(tag)
        return self.values[k::len(self.tags)]


@dataclass
class Block:
    name: str
    line: int
    items: dict = field(default_factory=dict)  # tag -> Value
    loops: list[Loop] = field(default_factory=list)

    def loop_with(self, tag: str) -> Loop | None:
        return next((lp for lp in self.loops if tag in lp.tags), None)


def _norm_tag(tag: str) -> str:
    t = tag.lower().replace(".", "_", 1)
    return "_diffrn_radiation_wavelength" if t == "_diffrn_radiation_wavelength_value" else t


def _tokens(text: str, path):
    """Yield ``Value`` tokens (text fields included) with their 1-based line."""
    lines = text.splitlines()
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if line.startswith(";"):
            start = i
            body = [line[1:]]
            i += 1
            while i < n and not lines[i].startswith(";"):
                body.append(lines[i])
                i += 1
            if i >= n:
                raise InputFileError(path, "text field opened with ';' is never closed (truncated file?)",
                                     line=start + 1)
            yield Value("\n".join(body), start + 1, quoted=True)
            rest = lines[i][1:]
            i += 1
            for m in _TOKEN.finditer(rest):
                if m.group("c") is None:
                    tok = m.group(0)
                    yield Value(tok[1:-1], i, True) if m.group("q") else Value(tok, i)
            continue
        for m in _TOKEN.finditer(line):
            if m.group("c") is not None:
                break
            tok = m.group(0)
            yield Value(tok[1:-1], i + 1, True) if m.group("q") else Value(tok, i + 1)
        i += 1


def parse_cif(text: str, path) -> list[Block]:
    """Split CIF text into data blocks of single items and loops (CIF 1.1 syntax).

    Raises
    ------
    InputFileError
        Items before the first ``data_``, a tag without a value, a value without a tag, a
        loop whose value count is not a multiple of its tag count (a truncated file), an
        unterminated text field.  With the line.
    """
    blocks: list[Block] = []
    max_values = 8 * PATTERN_POINTS.value()
    n_values = 0
    toks = _tokens(text, path)
    pending: Value | None = None

    def nxt():
        nonlocal pending
        if pending is not None:
            tok, pending = pending, None
            return tok
        return next(toks, None)

    def is_word(tok: Value, word: str) -> bool:
        return not tok.quoted and tok.text.lower().startswith(word)

    def is_tag(tok: Value) -> bool:
        return not tok.quoted and tok.text.startswith("_")

    def is_reserved(tok: Value) -> bool:
        return not tok.quoted and tok.text.lower().startswith(_RESERVED)

    while True:
        tok = nxt()
        if tok is None:
            break
        if is_word(tok, "data_"):
            blocks.append(Block(tok.text[5:], tok.line))
            continue
        if is_reserved(tok):  # save_/global_/stop_: frames are not used by pdCIF; skip the word
            if not is_word(tok, "loop_"):
                continue
        if not blocks:
            if not (is_tag(tok) or is_word(tok, "loop_")):
                raise InputFileError(path, f"expected 'data_NAME' or a CIF tag, found {tok.text[:30]!r} "
                                     "(not a CIF file?)", line=tok.line)
            # items before the first data_ (TOPAS writes its publication items so): an unnamed block
            blocks.append(Block("", tok.line))
        blk = blocks[-1]
        if is_word(tok, "loop_"):
            loop = Loop([], tok.line)
            tok = nxt()
            while tok is not None and is_tag(tok):
                loop.tags.append(_norm_tag(tok.text))
                tok = nxt()
            if not loop.tags:
                raise InputFileError(path, "loop_ without tags", line=loop.line)
            while tok is not None and not is_tag(tok) and not is_reserved(tok):
                loop.values.append(tok)
                n_values += 1
                if n_values > max_values:
                    check_pattern_points(n_values // 8, f"{path} ({n_values:,} CIF values)")
                tok = nxt()
            pending = tok
            if len(loop.values) % len(loop.tags):
                last = loop.values[-1].line if loop.values else loop.line
                raise InputFileError(path, f"loop_ of {len(loop.tags)} tags (line {loop.line}) holds "
                                     f"{len(loop.values)} values, not a multiple of {len(loop.tags)} "
                                     "(truncated or damaged file?)", line=last)
            blk.loops.append(loop)
            continue
        if is_tag(tok):
            val = nxt()
            if val is None or is_tag(val) or is_reserved(val):
                raise InputFileError(path, f"tag {tok.text} has no value", line=tok.line)
            blk.items[_norm_tag(tok.text)] = val
            continue
        raise InputFileError(path, f"value {tok.text[:30]!r} without a tag", line=tok.line)
    return blocks


def cif_number(v: Value, path, what: str) -> tuple[float, float | None]:
    """``"1234(35)"`` -> (1234.0, 35.0); ``"1.5406"`` -> (1.5406, None); errors name tag and line."""
    if v.missing:
        raise InputFileError(path, f"{what}: missing value {v.text!r}; expected a number", line=v.line)
    m = _NUM_SU.match(v.text.strip())
    if not m or not (m.group(2) or m.group(3)):
        raise InputFileError(path, f"{what}: expected a number, found {v.text[:40]!r}", line=v.line)
    sign, ip, fp, ex, su = m.groups()
    val = float(f"{sign}{ip or '0'}.{fp or '0'}e{ex or '0'}")
    if not math.isfinite(val):
        raise InputFileError(path, f"{what}: {v.text[:40]!r} is not a finite number", line=v.line)
    sig = None
    if su is not None:
        sig = int(su) * 10.0 ** (-len(fp or "") + int(ex or "0"))
    return val, sig


def _column(loop: Loop, tag: str, path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    vals = loop.column(tag)
    out = np.empty(len(vals))
    sus = np.empty(len(vals))
    have_su = False
    for i, v in enumerate(vals):
        out[i], s = cif_number(v, path, tag)
        if s is not None:
            have_su = True
            sus[i] = s
        else:
            sus[i] = np.nan
    lines = np.array([v.line for v in vals], dtype=int)
    return out, (sus if have_su else None), lines


def _item_number(blocks: list[Block], tag: str, path) -> tuple[float, int] | None:
    for b in blocks:
        if tag in b.items and not b.items[tag].missing:
            val, _ = cif_number(b.items[tag], path, tag)
            return val, b.items[tag].line
    return None


def _radiation(blocks: list[Block], path) -> tuple[FileWavelength | None, str | None, dict]:
    """Wavelength(s), probe and notes from the ordered blocks (data block first)."""
    notes: dict = {}
    probe = None
    for b in blocks:
        for tag in ("_diffrn_radiation_probe", "_diffrn_radiation_type"):
            v = b.items.get(tag)
            if v is not None and not v.missing:
                notes[tag.removeprefix("_diffrn_radiation_")] = v.text[:60]
                if probe is None and "neutron" in v.text.lower():
                    probe = "neutron"
                elif probe is None and re.search(r"x-?ray", v.text, re.I):
                    probe = "xray"
    for b in blocks:
        lp = b.loop_with("_diffrn_radiation_wavelength")
        if lp is not None:
            lam, _, lines = _column(lp, "_diffrn_radiation_wavelength", path)
            if not len(lam):  # a loop header with no rows under it
                raise InputFileError(path, "the loop of _diffrn_radiation_wavelength has no values", line=lp.line)
            if "_diffrn_radiation_wavelength_wt" in lp.tags:
                wt = np.array([cif_number(v, path, "_diffrn_radiation_wavelength_wt")[0] if not v.missing
                               else 1.0 for v in lp.column("_diffrn_radiation_wavelength_wt")])
            else:
                wt = np.linspace(1.0, 0.5, len(lam)) if len(lam) > 1 else np.ones(1)  # listed order: Kα1 first
            keep = wt > 0
            if not np.any(keep):
                raise InputFileError(path, "every _diffrn_radiation_wavelength_wt is 0", line=lp.line)
            lam, wt, lines = lam[keep], wt[keep], lines[keep]
            order = np.argsort(-wt, kind="stable")
            l1 = check_wavelength(float(lam[order[0]]), path, "_diffrn_radiation_wavelength", int(lines[order[0]]))
            fw = FileWavelength(l1, source=f"_diffrn_radiation_wavelength (line {int(lines[order[0]])})")
            if len(order) > 1 and abs(lam[order[1]] - l1) > 1e-6:
                fw.wavelength2 = check_wavelength(float(lam[order[1]]), path, "_diffrn_radiation_wavelength",
                                                  int(lines[order[1]]))
                if "_diffrn_radiation_wavelength_wt" in lp.tags:
                    fw.ka2_ratio = float(wt[order[1]] / wt[order[0]])
            if len(order) > 2:
                notes["wavelengths_ignored"] = [float(v) for v in lam[order[2:]]]
            return fw, probe, notes
        v = b.items.get("_diffrn_radiation_wavelength")
        if v is not None and not v.missing:
            lam, _ = cif_number(v, path, "_diffrn_radiation_wavelength")
            check_wavelength(lam, path, "_diffrn_radiation_wavelength", v.line)
            return FileWavelength(lam, source=f"_diffrn_radiation_wavelength (line {v.line})"), probe, notes
    got = _item_number(blocks, "_pd_proc_wavelength", path)
    if got is not None:
        check_wavelength(got[0], path, "_pd_proc_wavelength", got[1])
        return FileWavelength(got[0], source=f"_pd_proc_wavelength (line {got[1]})"), probe, notes
    for b in blocks:
        v = b.items.get("_diffrn_radiation_type")
        if v is not None and not v.missing:
            fw = tube_wavelength(v.text.replace("~", ""))
            if fw is not None:
                fw.source = f"_diffrn_radiation_type {v.text!r} (line {v.line}): {fw.source}"
                return fw, probe, notes
    return None, probe, notes


_PD_DATA_TAG = re.compile(rb"_pd_(?:meas|proc)[._](?:counts|intensity)_(?:total|net)", re.I)


def may_be_pdcif(path) -> bool:
    """Whether a ``.cif`` found in a folder should be read as a powder pattern.

    ``False`` only for a readable file without any ``_pd_meas_``/``_pd_proc_`` intensity
    item -- a structure CIF; anything else is ``True`` so that :func:`read_pdcif` reports
    what is wrong with it.  The ``accepts`` test of the ``pdcif`` reader.
    """
    from ..text import MAX_FILE_BYTES

    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            return True
        return bool(_PD_DATA_TAG.search(p.read_bytes()))
    except OSError:
        return True


def read_pdcif(path, *, kind=None, x_kind=None, wavelength=None, radiation=None, composition=None,
               block: str | int | None = None, **fields):
    """Read the powder pattern of an IUCr powder CIF into an :class:`~diffpy_diffusion.types.Observation`.

    Parameters
    ----------
    path : str or Path
        The ``.cif`` file.
    kind, x_kind, wavelength, radiation, composition, **fields
        As for :func:`diffpy_diffusion.io.read_observation`; a ``wavelength`` given here
        overrides the file's.
    block : str or int, optional
        Which data block holds the pattern when there are several (name or 0-based index
        among the blocks with a pattern); default the first.

    Raises
    ------
    InputFileError
        One line naming the file and the line: no powder data loop (a structure CIF is
        read with ``read_structure``), bad numbers, point-count mismatches, 2θ without a
        wavelength anywhere in the file, time-of-flight data.
    """
    p = Path(path)
    text = read_text(p)
    blocks = parse_cif(text, p)
    if not blocks:
        raise InputFileError(p, "no 'data_' block; not a CIF file", line=1)
    with_data = [(b, lp, tag) for b in blocks for tag in Y_TAGS for lp in [b.loop_with(tag)] if lp is not None]
    seen: set = set()
    candidates = []
    for b, lp, tag in with_data:  # first y tag (by priority) per block
        if id(b) not in seen:
            seen.add(id(b))
            candidates.append((b, lp, tag))
    candidates.sort(key=lambda c: blocks.index(c[0]))
    if not candidates:
        tof = any(b.loop_with("_pd_meas_time_of_flight") for b in blocks)
        if tof:
            raise InputFileError(p, "time-of-flight powder data are not supported (2θ or Q data only)")
        raise InputFileError(p, "no powder pattern: expected a loop with one of " + ", ".join(Y_TAGS)
                             + " (a structure CIF is read with --structure/read_structure)")
    if block is None:
        blk, loop, ytag = candidates[0]
    else:
        pick = [c for c in candidates if c[0].name == block] if isinstance(block, str) else \
            (candidates[block:block + 1] if 0 <= block < len(candidates) else [])
        if not pick:
            raise InputFileError(p, f"no pattern block {block!r}; blocks with a pattern: "
                                 + ", ".join(c[0].name for c in candidates))
        blk, loop, ytag = pick[0]
    meta: dict = {"cif_block": blk.name, "y_item": ytag}
    if len(candidates) > 1:
        meta["cif_pattern_blocks"] = [c[0].name for c in candidates]

    y, y_su, linenos = _column(loop, ytag, p)
    n = len(y)
    check_pattern_points(n, str(p))
    for count_tag in ("_pd_meas_number_of_points", "_pd_proc_number_of_points"):
        v = blk.items.get(count_tag)
        if v is not None and not v.missing and count_tag.split("_")[2] == ytag.split("_")[2]:
            declared, _ = cif_number(v, p, count_tag)
            if int(declared) != n:
                raise InputFileError(p, f"{count_tag} is {int(declared)} but the loop holds {n} points "
                                     "(truncated file?)", line=v.line)

    xtag = next((t for t in X_TAGS if t in loop.tags), None)
    x_kind_file = "2theta"
    if xtag is not None:
        x, _, _ = _column(loop, xtag, p)
    elif "_pd_proc_recip_len_q" in loop.tags:
        x, _, _ = _column(loop, "_pd_proc_recip_len_q", p)
        xtag, x_kind_file = "_pd_proc_recip_len_Q", "q"
    elif "_pd_proc_d_spacing" in loop.tags:
        d, _, _ = _column(loop, "_pd_proc_d_spacing", p)
        if np.any(d <= 0):
            bad = int(np.argmax(d <= 0))
            raise InputFileError(p, f"_pd_proc_d_spacing must be positive, found {d[bad]:g}", line=int(linenos[bad]))
        x, xtag, x_kind_file = 2 * np.pi / d, "_pd_proc_d_spacing (as Q = 2π/d)", "q"
    else:
        if "_pd_meas_time_of_flight" in loop.tags:
            raise InputFileError(p, "time-of-flight powder data are not supported (2θ or Q data only)",
                                 line=loop.line)
        prefixes = ("_pd_meas_2theta_range", "_pd_proc_2theta_range")
        if ytag.startswith("_pd_proc"):
            prefixes = prefixes[::-1]
        x = None
        for pre in prefixes:
            got = [blk.items.get(f"{pre}_{k}") for k in ("min", "max", "inc")]
            if all(g is not None and not g.missing for g in got):
                lo, hi, inc = (cif_number(g, p, f"{pre}_{k}")[0] for g, k in zip(got, ("min", "max", "inc")))
                if inc == 0:
                    raise InputFileError(p, f"{pre}_inc is 0", line=got[2].line)
                implied = (hi - lo) / inc + 1
                if abs(implied - n) > 0.5:
                    raise InputFileError(p, f"{pre}_min/max/inc = {lo:g}/{hi:g}/{inc:g} imply {implied:.0f} "
                                         f"points, the loop holds {n} (truncated file?)", line=got[0].line)
                x = lo + inc * np.arange(n)
                xtag = f"{pre}_min/max/inc"
                break
        if x is None:
            raise InputFileError(p, f"no x values for {ytag}: expected _pd_meas_2theta_scan or "
                                 "_pd_proc_2theta_corrected in its loop, or _pd_meas_2theta_range_min/max/inc",
                                 line=loop.line)
    meta["x_item"] = xtag

    sigma = None
    keep = np.ones(n, dtype=bool)
    if y_su is not None:
        if np.any(np.isnan(y_su)):
            bad = int(np.argmax(np.isnan(y_su)))
            raise InputFileError(p, f"{ytag}: some values have an s.u. and this one has none", line=int(linenos[bad]))
        sigma, meta["sigma_from"] = y_su, "s.u. of " + ytag
    elif "_pd_proc_ls_weight" in loop.tags:
        w, _, _ = _column(loop, "_pd_proc_ls_weight", p)
        if np.any(w < 0):
            bad = int(np.argmax(w < 0))
            raise InputFileError(p, f"_pd_proc_ls_weight must not be negative, found {w[bad]:g}",
                                 line=int(linenos[bad]))
        keep = w > 0
        if not np.all(keep):
            meta["excluded_points"] = int(np.count_nonzero(~keep))
        sigma = np.full(n, np.nan)
        sigma[keep] = 1.0 / np.sqrt(w[keep])
        meta["sigma_from"] = "_pd_proc_ls_weight"
    elif ytag.startswith("_pd_meas_counts"):
        if np.any(y < 0):
            bad = int(np.argmax(y < 0))
            raise InputFileError(p, f"{ytag} must not be negative, found {y[bad]:g}", line=int(linenos[bad]))
        sigma, meta["sigma_from"] = np.sqrt(np.maximum(y, 1.0)), "√counts (pdCIF: counts carry no s.u.)"
    if ytag.startswith("_pd_meas_counts"):
        meta["y_unit"] = "counts"

    ordered = [blk] + [b for b in blocks if b is not blk]
    fw, probe, notes = _radiation(ordered, p)
    meta.update(notes)
    return finish(p, x[keep], y[keep], x_kind=x_kind_file, fmt="pdcif", sigma=None if sigma is None else sigma[keep],
                  linenos=linenos[keep], file_wavelength=fw, file_radiation=probe, meta=meta, kind=kind,
                  user_x_kind=x_kind, wavelength=wavelength, radiation=radiation, composition=composition,
                  **fields)
