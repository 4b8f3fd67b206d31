"""1,000 mixed bad files produce 1,000 clean errors.

Every file is broken in a way users meet (empty, binary, NaN rows, ragged
columns, a single column, text in a number column, x not increasing, 2θ out of
range, negative uncertainties, truncated or garbage CIF/.stru, JSON that is not
an observation, a folder named like a file...).  Through the CLI (``propose``,
in-process with click's runner) each must give exit status 2 and exactly one
line on stderr naming the file, no traceback; through the Python readers each
must raise a :class:`~diffpy_diffusion.errors.DiffpyDiffusionError` naming it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffpy_diffusion.errors import DiffpyDiffusionError

N_FILES = 1000

_GOOD_ROWS = [f"{10 + 0.5 * i:.2f} {100 + i % 7}" for i in range(12)]


def _pattern_makers():
    rows = _GOOD_ROWS

    def j(lines):
        return ("\n".join(lines) + "\n").encode()

    return [
        (".xy", lambda r: b""),
        (".xy", lambda r: b"   \n\n\t\n"),
        (".xy", lambda r: r.randbytes(200) + b"\x00" + r.randbytes(50)),
        (".xy", lambda r: j(["# 2theta I"] + rows[:5] + ["nan 3"] + rows[6:])),
        (".xy", lambda r: j(["# 2theta I"] + rows[:4] + [rows[4] + " 5 6"] + rows[5:])),
        (".xy", lambda r: j(["# 2theta I"] + [x.split()[0] for x in rows])),
        (".xy", lambda r: j(["# 2theta I"] + rows[:3] + ["12.0 abc"] + rows[4:])),
        (".xy", lambda r: j(["# 2theta I"] + rows[:6] + rows[2:4] + rows[6:])),
        (".xy", lambda r: j(["# 2theta I", "170 1", "180 2", "190 3", "200 4"])),
        (".xy", lambda r: j(["# 2theta I", "1 2"])),
        (".xy", lambda r: j(["# 2theta I"] + rows[:5] + ["1e999 4"] + rows[5:])),
        (".xy", lambda r: j(["just a header line", "and another"])),
        (".xy", lambda r: j(rows)),  # ambiguous x axis without --x (2theta vs Q): must say so
        (".xye", lambda r: j(["# 2theta I esd"] + [x + " -1" for x in rows])),
        (".csv", lambda r: j(["2theta,I"] + [x.replace(" ", ",") + ",," for x in rows[:3]] + ["a,b"])),
        (".dat", lambda r: j(["10 0.5 30"] + [str(i) for i in range(12)])),  # step scan: wrong count
        (".chi", lambda r: j(["2-Theta Angle", "Intensity", "       99"] + rows)),
        (".gr", lambda r: j(["# r G"] + [f"{-1 + 0.1 * i:.2f} 0.1" for i in range(10)])),
        (".gr", lambda r: "\ufeff# r G\r\n1 nan\r\n2 0\r\n3 0\r\n".encode("utf-8")),
        (".gr", lambda r: "# r G\n1 2\n".encode("utf-16")),
        (".json", lambda r: b'{"x": [1, 2, 3]}'),
        (".json", lambda r: b'{"x": [1, 2, 3], "y": [1, 2], "x_kind": "q"}'),
        (".json", lambda r: b"[" * 50_000),
        (".json", lambda r: b'{"x": "abc", "y": [1], "x_kind": "2theta"}'),
        (".xy", lambda r: "# 2θ I\n10 1\n11 \u00a0\n12 3\n".encode("latin-1", errors="replace")),
        (".xy", lambda r: j(["# 2theta I"] + rows)[: r.randint(1, 20)] + b"\x00\x00"),
    ]


def _structure_makers():
    cif = ("data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n"
           "_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
           "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\nNi1 Ni 0 0 0\n")
    return [
        (".cif", lambda r: b""),
        (".cif", lambda r: cif.encode()[: r.randint(5, 60)]),
        (".cif", lambda r: cif.replace("_cell_length_a 4", "_cell_length_a 0").encode()),
        (".cif", lambda r: cif.replace("_cell_angle_gamma 90", "_cell_angle_gamma 180").encode()),
        (".cif", lambda r: cif.replace("Ni1 Ni 0 0 0", "").encode()),
        (".cif", lambda r: r.randbytes(300)),
        (".cif", lambda r: b"data_\nloop_\n_a\n"),
        (".stru", lambda r: b"title x\nformat pdffit\ncell 1, 2\natoms\nNI 0 0\n"),
        (".stru", lambda r: b"garbage"),
        (".vasp", lambda r: b"Ni\n1.0\n0 0 0\n0 0 0\n0 0 0\nNi\n1\nDirect\n0 0 0\n"),
        (".json", lambda r: b'{"lattice": {"matrix": [[1, 0], [0, 1]]}, "sites": []}'),
    ]


def make_bad_files(folder: Path, n: int = N_FILES, seed: int = 8) -> list[tuple[Path, str]]:
    """``n`` bad files, patterns and structures mixed, as (path, "pattern"|"structure")."""
    rng = random.Random(seed)
    makers = [(ext, f, "pattern") for ext, f in _pattern_makers()] + \
             [(ext, f, "structure") for ext, f in _structure_makers()]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ext, make, kind = makers[i % len(makers)]
        p = folder / f"bad{i:04d}{ext}"
        if i % 97 == 0:  # a folder named like a data file
            p.mkdir()
        else:
            p.write_bytes(make(rng))
        out.append((p, kind))
    return out


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


def test_thousand_bad_files_thousand_clean_errors_python(bad_files):
    from diffpy_diffusion.io import read_observation, read_structure

    errors = []
    for p, kind in bad_files:
        try:
            (read_observation if kind == "pattern" else read_structure)(p)
        except DiffpyDiffusionError as exc:
            msg = str(exc)
            assert str(p) in msg, msg
            assert "\n" not in msg.strip(), msg
            errors.append(type(exc).__name__)
        except BaseException as exc:  # noqa: BLE001
            pytest.fail(f"{p.name}: non-contract {type(exc).__name__}: {exc}")
        else:
            pytest.fail(f"{p.name}: a bad file was accepted")
    assert len(errors) == N_FILES
    print(f"\n{len(errors)} bad files -> {len(errors)} clean errors: "
          + ", ".join(f"{k} {errors.count(k)}" for k in sorted(set(errors))))


def test_thousand_bad_files_thousand_clean_errors_cli(bad_files):
    """The user's entry point: ``diffpy-diffuse propose BAD -c NaCl`` -> exit 2, one line, no traceback."""
    from diffpy_diffusion.cli import cli

    runner = CliRunner()
    n_checked = 0
    for p, kind in bad_files:
        if kind != "pattern":
            continue
        res = runner.invoke(cli, ["propose", str(p), "-c", "NaCl", "--backend", "example", "--n", "1", "--top", "1",
                                  "--quiet"], catch_exceptions=True)
        err = res.stderr if hasattr(res, "stderr") and res.stderr is not None else res.output
        assert res.exit_code == 2, f"{p.name}: exit {res.exit_code}: {res.output[-500:]} {res.exception!r}"
        assert "Traceback" not in err
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("Error"), err
        if p.is_file():  # (a folder is refused by click's own usage message)
            assert len(lines) == 1, err
            assert p.name in err, err
        n_checked += 1
    assert n_checked > 0.6 * N_FILES
    print(f"\nCLI: {n_checked} bad pattern files -> {n_checked} exit-2 one-line errors")


def test_propose_batch_over_bad_files_reports_each(tmp_path):
    """propose-batch over 200 bad pattern files: finishes, one failure record per file, clean messages."""
    from diffpy_diffusion import batch

    folder = tmp_path / "bad"
    files = [p for p, kind in make_bad_files(folder, 300, seed=9)
             if kind == "pattern" and p.is_file() and p.suffix in batch.pattern_extensions()][:200]
    for p in folder.iterdir():
        if p not in files:
            if p.is_dir():
                os.rmdir(p)
            else:
                p.unlink()
    out = tmp_path / "out"
    summary = batch.propose_batch(folder, out, composition="NaCl", backend="example", n=1, top=1,
                                  screen_only=True, screen_options={"gradient_steps": 0}, progress=False)
    assert len(summary.failed) == len(files) and not summary.computed
    errs = list(out.glob("*.error.json"))
    assert len(errs) == len(files)
    import json

    for e in errs:
        msg = json.loads(e.read_text())["error"]
        assert msg and "\n" not in msg and "Traceback" not in msg
