"""The command line: happy path, and one clear error line for each kind of bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from diffrecon.cli import main

SMALL = ["--set", "scan_points=30", "--set", "frame_px=32", "--set", "distance_m=1.0",
         "--set", "probe.numerical_aperture=8e-4", "--set", "probe.defocus_m=6e-4"]
DATA = "entry_1/data_1/data"
TRANSLATION = "entry_1/sample_1/geometry_1/translation"


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "scan.cxi"
    assert main(["-q", "simulate", "--out", str(path), *SMALL]) == 0
    return path


def test_simulate_inspect_reconstruct(good_file, tmp_path, capsys):
    assert main(["inspect", str(good_file)]) == 0
    assert "validation: OK" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["-q", "reconstruct", str(good_file), "--out", str(out),
                 "--set", "recon.epochs=2"]) == 0
    assert (out / "reconstruction.h5").exists() and (out / "report.png").exists()


def test_config_subcommand_runs_as_module():
    done = subprocess.run([sys.executable, "-m", "diffrecon", "config", "ptycho"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "[recon]" in done.stdout


def edited(good_file, tmp_path, edit):
    path = tmp_path / "bad.cxi"
    shutil.copy(good_file, path)
    with h5py.File(path, "r+") as handle:
        edit(handle)
    return path


def replace(handle, key, value):
    del handle[key]
    handle.create_dataset(key, data=value)


CASES = {
    "missing translations": (lambda h: h.__delitem__(TRANSLATION), TRANSLATION),
    "count mismatch": (lambda h: replace(h, TRANSLATION, h[TRANSLATION][:-3]), TRANSLATION),
    "negative counts": (lambda h: replace(h, DATA, h[DATA][()] - 5.0), DATA),
    "nan counts": (lambda h: replace(h, DATA, np.where(np.arange(32) == 3, np.nan,
                                                       h[DATA][()])), DATA),
    "non-square frames": (lambda h: replace(h, DATA, h[DATA][:, :, :30]), DATA),
    "odd frames": (lambda h: replace(h, DATA, h[DATA][:, :31, :31]), DATA),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_gives_one_clear_line(case, good_file, tmp_path, capsys):
    edit, key = CASES[case]
    path = edited(good_file, tmp_path, edit)
    code = main(["-q", "reconstruct", str(path), "--out", str(tmp_path / "r"),
                 "--set", "recon.epochs=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) <= 2 and "Traceback" not in err
    assert err.startswith("diffrecon: error:") and str(path) in err and key in err


def test_unknown_config_key_suggests(good_file, tmp_path, capsys):
    code = main(["-q", "reconstruct", str(good_file), "--set", "recon.epoch=3"])
    err = capsys.readouterr().err
    assert code == 2 and "recon.epoch" in err and "did you mean 'epochs'" in err
    config = tmp_path / "c.toml"
    config.write_text("[model]\ngeometri = 'far_field'\n")
    code = main(["-q", "reconstruct", str(good_file), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "model.geometri" in err and "geometry" in err


def test_missing_file(tmp_path, capsys):
    assert main(["-q", "inspect", str(tmp_path / "nope.cxi")]) == 2
    assert "nope.cxi" in capsys.readouterr().err
