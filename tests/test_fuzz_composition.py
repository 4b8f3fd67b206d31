"""Fuzzing of the small parsers users type into: composition, wavelength, size; and of .ddp projects.

Contracts:

* ``types.parse_composition(text)`` returns ``{element: amount}`` with valid
  element symbols and finite positive amounts, or raises
  :class:`~diffpy_diffusion.errors.CompositionError`; a formula it returns
  re-parses to the same dict (``composition_formula`` round trip).
* ``io.parse_wavelength`` / ``io.parse_size_nm`` return a finite positive float
  in range or raise ``ValueError`` (the CLI turns it into a usage error).
* ``io.ddp.read_ddp`` returns a project or raises ``InputFileError``
  naming the file, for any bytes.

``test_fuzz_target_*`` (slow) feed >= 10,000 derandomised inputs each.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import random
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from diffpy_diffusion.errors import CompositionError, DiffpyDiffusionError, InputFileError
from diffpy_diffusion.types import composition_formula, parse_composition

FUZZ_EXAMPLES = int(os.environ.get("DIFFPY_DIFFUSION_FUZZ_EXAMPLES", "10000"))
_HC = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
       HealthCheck.function_scoped_fixture]
PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=_HC)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=_HC)

_SYMBOLS = ["H", "He", "Li", "O", "Na", "Cl", "Cd", "Se", "Ba", "Ti", "Ni", "Zn", "S", "Pb", "I", "Cs", "Og", "Uue",
            "Xx", "cd", "CD", "D", "T", "Q"]
_COUNTS = ["", "1", "2", "0", "0.5", ".5", "1.", "1e3", "1e400", "-1", "nan", "inf", "00", "1.2.3", "²", "٣",
           "9" * 400, "0.0000001", " 2", "1/2"]

composition_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.tuples(st.sampled_from(_SYMBOLS), st.sampled_from(_COUNTS)), max_size=8).map(
        lambda parts: "".join(a + b for a, b in parts)),
    st.lists(st.tuples(st.sampled_from(_SYMBOLS), st.sampled_from(_COUNTS), st.sampled_from(["", " ", "\t", "(",
                                                                                             ")", "·", "\u00a0"])),
             max_size=8).map(lambda parts: "".join(a + b + c for a, b, c in parts)),
)


COUNTS = {"composition": 0, "wavelength": 0, "size": 0, "ddp": 0}


def check_composition(text) -> None:
    from pymatgen.core.periodic_table import Element

    COUNTS["composition"] += 1
    try:
        comp = parse_composition(text)
    except CompositionError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
        return
    except BaseException as exc:  # noqa: BLE001
        raise AssertionError(f"non-contract {type(exc).__name__} for {text!r}: {exc}") from exc
    assert comp, f"empty result for {text!r}"
    for el, n in comp.items():
        assert Element.is_valid_symbol(el), el
        assert math.isfinite(n) and n > 0, (el, n)
    again = parse_composition(composition_formula(comp))
    assert again.keys() == comp.keys()
    for el in comp:
        assert again[el] == pytest.approx(comp[el], rel=1e-5), (text, comp, again)


def check_wavelength(text) -> None:
    from diffpy_diffusion.io import parse_wavelength

    COUNTS["wavelength"] += 1
    try:
        w = parse_wavelength(text)
    except ValueError as exc:
        assert str(exc)
        return
    except BaseException as exc:  # noqa: BLE001
        raise AssertionError(f"non-contract {type(exc).__name__} for {text!r}: {exc}") from exc
    assert math.isfinite(float(w)) and 0.01 <= float(w) <= 20


def check_size(text) -> None:
    from diffpy_diffusion.io import parse_size_nm

    COUNTS["size"] += 1
    try:
        v = parse_size_nm(text)
    except ValueError as exc:
        assert str(exc)
        return
    except BaseException as exc:  # noqa: BLE001
        raise AssertionError(f"non-contract {type(exc).__name__} for {text!r}: {exc}") from exc
    assert math.isfinite(v) and v > 0, (text, v)


unit_text = st.one_of(st.text(max_size=20),
                      st.tuples(st.sampled_from(_COUNTS + ["3", "30", "1.5406", "0.0", "1e-30", "1e30"]),
                                st.sampled_from(["", "nm", "A", "Å", " nm", "um", "µm", "pm", "angstrom", "CuKa",
                                                 "Ka1", "x"])).map("".join),
                      st.sampled_from(["CuKa", "cuka1", "Mo Ka", "Cu-K-alpha", "Fe", "Xx", "ka", ""]),
                      st.floats(allow_nan=True, allow_infinity=True))


@PROPERTY
@given(composition_text)
def test_prop_parse_composition(text):
    check_composition(text)


@PROPERTY
@given(st.dictionaries(st.sampled_from(["Cd", "Se", "O", "Ba", "Ti", "H"]),
                       st.floats(min_value=1e-3, max_value=1e3, allow_nan=False), min_size=1, max_size=5))
def test_prop_composition_roundtrip(comp):
    back = parse_composition(composition_formula(comp))
    assert back.keys() == comp.keys()
    for k in comp:
        assert back[k] == pytest.approx(comp[k], rel=1e-5)


@PROPERTY
@given(unit_text)
def test_prop_parse_wavelength_and_size(text):
    check_wavelength(text)
    check_size(text)


def test_non_string_compositions_are_clean():
    for bad in (None, 3, 2.5, b"CdSe", ["Cd"], {"Cd": 1}):
        with pytest.raises(CompositionError):
            parse_composition(bad)


# --------------------------------------------------------------------------- .ddp projects


def _seed_ddp() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("proj/fits", "fit1")
        z.writestr("proj/journal", "made by a test")
        z.writestr("proj/fit1/parameters", pickle.dumps({1: 3.52, 2: [1.0, 2.0]}, protocol=2))
        z.writestr("proj/fit1/result", pickle.dumps((0.12, "rw"), protocol=2))
        z.writestr("proj/fit1/structure/phase/initial", "title Ni\nformat pdffit\ncell 3.5, 3.5, 3.5, 90, 90, 90\n"
                   "atoms\nNI 0 0 0 1.0\n 0 0 0 0\n 0.006 0.006 0.006\n 0 0 0\n 0 0 0\n 0 0 0\n")
        z.writestr("proj/fit1/structure/phase/constraints", pickle.dumps({"lat(1)": "@1"}, protocol=2))
        z.writestr("proj/fit1/dataset/data/obs", "1.0 0.5\n1.1 0.4\n")
        z.writestr("proj/fit1/dataset/data/calc", pickle.dumps({"rcalc": [1.0, 1.1]}, protocol=2))
    return buf.getvalue()


_DDP_SEED = _seed_ddp()


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        if op < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.6:
            b = b[: rng.randint(0, len(b))]
        elif op < 0.8:
            k = rng.randint(0, len(b))
            b[k:k] = rng.randbytes(rng.randint(1, 16))
        elif b:
            k = rng.randrange(len(b))
            del b[k: k + rng.randint(1, 16)]
    return bytes(b)


def _ddp_input(i: int) -> bytes:
    rng = random.Random(f"ddp:{i}")
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(0, 400))
    return _mutate_bytes(rng, _DDP_SEED)


def check_ddp(tmp, data: bytes) -> None:
    from diffpy_diffusion.io.ddp import read_ddp

    COUNTS["ddp"] += 1
    p = tmp / "fuzz.ddp"
    p.write_bytes(data)
    try:
        read_ddp(p)
    except DiffpyDiffusionError as exc:
        assert isinstance(exc, InputFileError) and str(p) in str(exc), exc
    except BaseException as exc:  # noqa: BLE001
        raise AssertionError(f"non-contract {type(exc).__name__}: {exc}") from exc


def test_prop_ddp_seed_reads(tmp_path):
    from diffpy_diffusion.io.ddp import read_ddp

    p = tmp_path / "seed.ddp"
    p.write_bytes(_DDP_SEED)
    proj = read_ddp(p)
    assert proj.fits[0].rw == pytest.approx(0.12)
    assert proj.fits[0].phases[0].constraints == {"lat(1)": "@1"}


def test_prop_ddp_mutations(tmp_path):
    for i in range(300):
        check_ddp(tmp_path, _ddp_input(i))


# --------------------------------------------------------------------------- bounded fuzz targets (CI)


def _report(name: str, before: int, c0: float | None = None) -> None:
    import time

    n = COUNTS[name] - before
    cpu = f" in {time.process_time() - c0:.1f} s CPU" if c0 is not None else ""
    print(f"\nfuzz target {name}: {n} inputs{cpu}, no non-contract exception")
    assert n >= FUZZ_EXAMPLES


@pytest.mark.slow
def test_fuzz_target_parse_composition():
    import time

    before, c0 = COUNTS["composition"], time.process_time()

    @FUZZ
    @given(composition_text)
    def target(text):
        check_composition(text)

    target()
    _report("composition", before, c0)


@pytest.mark.slow
def test_fuzz_target_parse_wavelength_and_size():
    import time

    before_w, before_s, c0 = COUNTS["wavelength"], COUNTS["size"], time.process_time()

    @FUZZ
    @given(unit_text)
    def target(text):
        check_wavelength(text)
        check_size(text)

    target()
    _report("wavelength", before_w, c0)
    _report("size", before_s)


@pytest.mark.slow
def test_fuzz_target_read_ddp(tmp_path):
    import time

    before, c0 = COUNTS["ddp"], time.process_time()
    for i in range(FUZZ_EXAMPLES):
        check_ddp(tmp_path, _ddp_input(i))
    _report("ddp", before, c0)
