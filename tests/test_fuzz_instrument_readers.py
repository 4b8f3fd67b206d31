"""Property tests and bounded fuzz targets for the instrument readers (issue 15), as for the column readers.

Contract: whatever bytes a ``.cif .xrdml .gsa .fxye .ras .brml`` file holds, reading it gives
an Observation satisfying its invariants or raises a
:class:`~diffpy_diffusion.errors.DiffpyDiffusionError` that names the file on one line; any
other exception is a bug.  Seeds are the hand-written reference files of
``tests/data/instruments/``; inputs are random bytes, the seeds truncated at any byte, with
tokens replaced (NaN, huge numbers, quotes, CIF/XML syntax), lines dropped or duplicated, and
for ``.brml`` the same edits applied inside the zip's RawData XML (or to the zip bytes).

``test_prop_*`` run a small fixed number of examples; ``test_fuzz_target_*`` (``slow``) feed
at least ``DIFFPY_DIFFUSION_FUZZ_EXAMPLES`` (default 10,000) inputs per format.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from diffpy_diffusion.errors import DiffpyDiffusionError, InputFileError

FUZZ_EXAMPLES = int(os.environ.get("DIFFPY_DIFFUSION_FUZZ_EXAMPLES", "10000"))
PROPERTY_EXAMPLES = int(os.environ.get("DIFFPY_DIFFUSION_PROPERTY_EXAMPLES", "60"))
_HC = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
       HealthCheck.function_scoped_fixture]
PROPERTY = settings(max_examples=PROPERTY_EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=_HC, print_blob=True)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=_HC, print_blob=True)

DATA = Path(__file__).parent / "data" / "instruments"
_SCRATCH = Path(tempfile.mkdtemp(prefix="diffpy-diffusion-fuzz-instr-"))
_BRML_MEMBER = "Experiment0/RawData0.xml"

SEEDS = {
    ".cif": [(DATA / n).read_text() for n in ("si_meas_counts.cif", "si_proc_su.cif")],
    ".xrdml": [(DATA / n).read_text() for n in ("si_111.xrdml", "si_111_counts.xrdml")],
    ".gsa": [(DATA / n).read_text() for n in ("si_111.gsa", "si_111_esd.gsa")],
    ".fxye": [(DATA / "si_111.fxye").read_text()],
    ".ras": [(DATA / "si_111.ras").read_text()],
    ".brml": [(DATA / "si_111_brml" / _BRML_MEMBER).read_text()],  # the member; zipped per example
}

_NASTY = ["nan", "inf", "-inf", "1e309", "-1e999", "9" * 400, "0", "-0", "", "1,5", "'", '"', ";", "#",
          "loop_", "data_", "_pd_meas_counts_total", "?", ".", "(", "1(2", "1.5(", "<", ">", "&lol;",
          "<!DOCTYPE x [<!ENTITY a 'b'>]>", "</dataPoints>", "<intensities>", "BANK", "*RAS_INT_END",
          "*RAS_HEADER_START", "CONS", "TIME_MAP", "\x00", "\x1a", "é", "😀", "\u2212" + "1", "1D+03", "e5"]


@st.composite
def mutated(draw, seeds: list[str]) -> bytes:
    text = draw(st.sampled_from(seeds))
    lines = text.split("\n")
    for _ in range(draw(st.integers(0, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["token", "token", "del", "dup", "junk", "swap", "long"]))
        toks = lines[i].split(" ")
        if op == "token":
            toks[draw(st.integers(0, len(toks) - 1))] = draw(st.sampled_from(_NASTY) | st.text(max_size=6))
            lines[i] = " ".join(toks)
        elif op == "del":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "junk":
            lines.insert(i, draw(st.text(max_size=30)))
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines[i] += " 1.0" * draw(st.integers(1, 100))
    data = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines).encode(
        draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"])), errors="replace")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]  # truncated
    if draw(st.integers(0, 9)) == 0:
        k = draw(st.integers(0, len(data)))
        data = data[:k] + draw(st.binary(min_size=1, max_size=8)) + data[k:]
    return data


def _zip(member: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(_BRML_MEMBER, member)
    return buf.getvalue()


@st.composite
def brml_bytes(draw) -> bytes:
    data = _zip(draw(mutated(SEEDS[".brml"])))
    if draw(st.integers(0, 3)) == 0:  # damage the container itself
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        else:
            k = draw(st.integers(0, len(data) - 1))
            data = data[:k] + bytes([data[k] ^ 0xFF]) + data[k + 1:]
    return data


def file_bytes(ext: str):
    body = brml_bytes() if ext == ".brml" else mutated(SEEDS[ext])
    return st.one_of(st.binary(max_size=512), st.text(max_size=300).map(str.encode), body, body, body)


_READ_KW = st.fixed_dictionaries({}, optional={
    "x_kind": st.sampled_from(["2theta", "q"]),
    "wavelength": st.sampled_from([1.5406, 0.7093]),
    "composition": st.sampled_from(["Si", "CdSe"]),
    "kind": st.sampled_from(["xrd", "pdf"]),
})

COUNTS: dict[str, int] = {}


def run_reader(ext: str, data: bytes, kwargs: dict) -> None:
    from diffpy_diffusion.io import read_observation
    from diffpy_diffusion.types import Observation

    COUNTS[ext] = COUNTS.get(ext, 0) + 1
    path = _SCRATCH / f"fuzz{ext}"
    path.write_bytes(data)
    try:
        obs = read_observation(path, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the point is to classify it
        assert isinstance(exc, DiffpyDiffusionError), f"non-contract {type(exc).__name__}: {exc}"
        assert str(path) in str(exc), f"error does not name the file: {exc}"
        assert "\n" not in str(exc), f"error is not one line: {exc!r}"
        if isinstance(exc, InputFileError) and exc.line is not None:
            assert exc.line >= 1
        return
    assert isinstance(obs, Observation) and obs.kind == "xrd"
    x, y = np.asarray(obs.x), np.asarray(obs.y)
    assert x.ndim == 1 and x.shape == y.shape and len(x) >= 3
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.diff(x) > 0)
    if obs.sigma is not None:
        assert np.all(np.isfinite(obs.sigma)) and np.all(np.asarray(obs.sigma) > 0)
    if obs.x_kind == "2theta":
        assert 0 < x[0] and x[-1] < 180
        assert obs.wavelength is not None and math.isfinite(obs.wavelength) and obs.wavelength > 0, \
            "a 2θ pattern without a wavelength must be an error"


EXTS = sorted(SEEDS)


def test_seeds_are_valid():
    """Every seed (unmutated) reads: the fuzzing starts from real files of each format."""
    for ext in EXTS:
        for seed in SEEDS[ext]:
            data = _zip(seed.encode()) if ext == ".brml" else seed.encode()
            before = COUNTS.get(ext, 0)
            run_reader(ext, data, {})
            assert COUNTS[ext] == before + 1
            from diffpy_diffusion.io import read_observation

            assert len(read_observation(_SCRATCH / f"fuzz{ext}").x) == 51


@pytest.mark.parametrize("ext", EXTS)
@PROPERTY
@given(data=st.data())
def test_prop_instrument_reader_contract(ext, data):
    run_reader(ext, data.draw(file_bytes(ext), label="file"), data.draw(_READ_KW, label="kwargs"))


@pytest.mark.slow
@pytest.mark.parametrize("ext", EXTS)
def test_fuzz_target_instrument_readers(ext):
    start = COUNTS.get(ext, 0)

    @FUZZ
    @given(data=st.data())
    def target(data):
        run_reader(ext, data.draw(file_bytes(ext), label="file"), data.draw(_READ_KW, label="kwargs"))

    target()
    assert COUNTS[ext] - start >= FUZZ_EXAMPLES
