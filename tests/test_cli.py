"""The command line, in process: simulate -> inspect -> reconstruct, and one clear error (no
traceback) for each kind of bad input. One subprocess test checks ``python -m diffrecon``."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import diffrecon
from diffrecon import api
from diffrecon.cli import _parser, main
from diffrecon.config import tomllib  # tomli before Python 3.11
from diffrecon.data import cxi
from diffrecon.data.results import read_results
from diffrecon.data.simulate import CDISimulation, simulators
from diffrecon.learn.train import load_train_config
from diffrecon.recon.checkpoint import load_checkpoint
from diffrecon.runconfig import load_config

DATA = "entry_1/data_1/data"
TRANSLATION = "entry_1/sample_1/geometry_1/translation"
DETECTOR = "entry_1/instrument_1/detector_1"
ENERGY = "entry_1/instrument_1/source_1/energy"
PATTERNS = 30
LEARN_PTYCHO = Path(__file__).parents[1] / "experiments" / "configs" / "learn_ptycho.toml"


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "x.cxi"
    code = main(["-q", "simulate", "--out", str(path), "--set", f"scan_points={PATTERNS}",
                 "--set", "frame_px=32"])
    assert code == 0
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One intra-op thread: see tests/test_recon.py (two-thread runs crawl under co-load)."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default output folders (<stem>-recon) must land in the test's folder."""
    monkeypatch.chdir(tmp_path)


def test_simulate_writes_a_cxi_file(good_file, capsys):
    assert good_file.exists()
    with h5py.File(good_file, "r") as handle:
        assert handle[DATA].shape == (PATTERNS, 32, 32)
        assert handle[TRANSLATION].shape == (PATTERNS, 3)
    path = Path("again.cxi")
    assert main(["simulate", "--out", str(path), "--set", "scan_points=12",
                 "--set", "frame_px=32"]) == 0
    assert capsys.readouterr().out.strip() == "wrote again.cxi: 12 patterns of (32, 32)"


def test_simulate_takes_its_toml_as_argument_or_option(capsys):
    """``simulate scene.toml`` and ``simulate --config scene.toml`` (the spelling of
    ``reconstruct``) do the same; both at once is an error naming them."""
    Path("scene.toml").write_text("scan_points = 9\nframe_px = 32\n")
    for how in (["scene.toml"], ["--config", "scene.toml"]):
        assert main(["simulate", *how, "--out", "s.cxi"]) == 0
        assert capsys.readouterr().out.strip() == "wrote s.cxi: 9 patterns of (32, 32)"
    assert main(["simulate", "scene.toml", "--config", "other.toml", "--out", "s.cxi"]) != 0
    err = capsys.readouterr().err
    assert "two simulation TOMLs" in err and "other.toml" in err


def test_simulation_keys_are_listed_with_defaults_and_read_back(capsys):
    """``diffrecon config MODALITY --simulate`` prints the settings of ``simulate`` as
    commented TOML, which ``simulate`` reads back as the defaults."""
    assert main(["config", "cdi", "--simulate"]) == 0
    text = capsys.readouterr().out
    assert "# 2D pattern or 3D intensity volume\ndimensions = 2\n" in text
    Path("cdi.toml").write_text(text)
    simulator, settings = api.simulation_settings("cdi.toml")
    assert settings == CDISimulation() and simulator is simulators.get("cdi")
    assert one_error(capsys, main(["config", "cdj", "--simulate"])).endswith("did you mean 'cdi'?")


def test_simulate_takes_a_training_config_s_simulation(capsys):
    """``simulate learn_ptycho.toml``: the scan the network is trained for (its [simulation]
    over the training defaults), with ``--set`` on top; a CDI training config has none."""
    _, settings = api.simulation_settings(LEARN_PTYCHO, overrides=["scan_points=9"])
    assert settings == dataclasses.replace(load_train_config(LEARN_PTYCHO).simulation,
                                           scan_points=9)
    assert main(["simulate", str(LEARN_PTYCHO), "--set", "scan_points=9", "--out", "s.cxi"]) == 0
    assert capsys.readouterr().out.strip() == "wrote s.cxi: 9 patterns of (32, 32)"
    err = one_error(capsys, main(["simulate", str(LEARN_PTYCHO.parent / "learn_cdi.toml"),
                                  "--out", "s.cxi"]))
    assert "training config of modality 'cdi' holds no scan to simulate" in err


def test_simulate_reports_a_volume_as_a_volume(capsys):
    """A 3D CDI volume is one measurement, not a stack of patterns; inspect's ratios read
    'label: value'."""
    assert main(["simulate", "--modality", "cdi", "--set", "dimensions=3", "--set",
                 "array_px=16", "--set", "object_px=6", "--out", "vol.cxi"]) == 0
    assert capsys.readouterr().out.strip() == "wrote vol.cxi: a 16 x 16 x 16 volume"
    assert main(["inspect", "vol.cxi", "--modality", "cdi"]) == 0
    assert re.search(r"\noverdetermination: \d", capsys.readouterr().out)


def test_inspect_summarises_and_validates(good_file, capsys):
    assert main(["inspect", str(good_file)]) == 0
    out = capsys.readouterr().out
    assert f"{PATTERNS} frames of 32 x 32 pixels" in out
    assert "memory:           patterns held in memory (0.1 MiB of" in out
    assert out.rstrip().endswith("validation: OK")


def test_reconstruct_writes_the_run_folder(good_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["reconstruct", str(good_file), "--out", str(out), "--set", "recon.epochs=2",
                 "-q"])
    captured = capsys.readouterr()
    assert code == 0
    assert "finished in" in captured.out and "nrmse" in captured.out
    assert "Traceback" not in captured.err
    for name in ("reconstruction.h5", "report.png", "config.toml", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    arrays, attrs = read_results(out / "reconstruction.h5")
    assert arrays["positions_m"].shape == (PATTERNS, 2) and "pixel_size_m" in attrs
    assert load_config(out / "config.toml").recon.epochs == 2

    # --resume continues the same folder with more epochs
    code = main(["-q", "reconstruct", str(good_file), "--resume", str(out),
                 "--set", "recon.epochs=3"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(out)["epoch"] == 3
    assert len(read_results(out / "reconstruction.h5")[0]["history/loss/total"]) == 3


def test_reconstruct_default_out_folder(good_file, tmp_path):
    assert main(["-q", "reconstruct", str(good_file), "--set", "recon.epochs=1",
                 "--set", "log.tensorboard=false", "--set", "log.report=false"]) == 0
    assert (tmp_path / "x-recon" / "reconstruction.h5").is_file()


def test_config_subcommand(capsys):
    assert main(["config", "--list"]) == 0
    assert "ptycho" in capsys.readouterr().out.split()
    assert main(["config", "ptycho"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["modality"] == "ptycho"


def test_python_dash_m_config_prints_toml():
    done = subprocess.run([sys.executable, "-m", "diffrecon", "config", "ptycho"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    values = tomllib.loads(done.stdout)
    assert values["modality"] == "ptycho" and "recon" in values


# --- bad input: one clear error line ------------------------------------------------------


def one_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    """Check the CLI failed cleanly and return its stderr."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2, err
    assert lines[0].startswith("diffrecon: error:"), err
    assert "Traceback" not in err
    return err


def replace(handle: h5py.File, key: str, value: np.ndarray) -> None:
    del handle[key]
    handle.create_dataset(key, data=value)


def with_nan(handle: h5py.File) -> None:
    patterns = handle[DATA][()]
    patterns[3, 10, 12] = np.nan
    replace(handle, DATA, patterns)


BAD_FILES: dict[str, tuple[Callable[[h5py.File], None], str, str]] = {
    # case: (edit, HDF5 key named in the error, another word the message must hold)
    "missing translations": (lambda h: h.__delitem__(TRANSLATION), TRANSLATION, "nothing"),
    "count mismatch": (lambda h: replace(h, TRANSLATION, h[TRANSLATION][:-3]), TRANSLATION,
                       f"{PATTERNS - 3} positions"),
    "translation shape": (lambda h: replace(h, TRANSLATION, h[TRANSLATION][:, :2]), TRANSLATION,
                          "(N, 3)"),
    "negative counts": (lambda h: replace(h, DATA, h[DATA][()] - 5.0), DATA, "non-negative"),
    "nan counts": (with_nan, DATA, "pattern 3"),
    "non-square frames": (lambda h: replace(h, DATA, h[DATA][:, :, :30]), DATA, "32x30"),
    "odd frames": (lambda h: replace(h, DATA, h[DATA][:, :31, :31]), DATA, "31x31"),
    "mask shape": (lambda h: replace(h, f"{DETECTOR}/mask", np.zeros((16, 16), np.uint8)),
                   f"{DETECTOR}/mask", "(16, 16)"),
    "missing energy": (lambda h: h.__delitem__(ENERGY), ENERGY, "missing"),
    "missing distance": (lambda h: h.__delitem__(f"{DETECTOR}/distance"),
                         f"{DETECTOR}/distance", "missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("command", ["reconstruct", "inspect"])
def test_bad_file_gives_one_clear_error(case, command, good_file, tmp_path, capsys):
    edit, key, detail = BAD_FILES[case]
    path = tmp_path / "bad.cxi"
    shutil.copy(good_file, path)
    with h5py.File(path, "r+") as handle:
        edit(handle)
    args = ["-q", command, str(path)]
    if command == "reconstruct":
        args += ["--out", str(tmp_path / "run"), "--set", "recon.epochs=1"]
    err = one_error(capsys, main(args))
    assert str(path) in err and key in err and detail in err
    assert not (tmp_path / "run").exists()


def test_nonexistent_data_file(tmp_path, capsys):
    missing = tmp_path / "nope.cxi"
    err = one_error(capsys, main(["-q", "reconstruct", str(missing)]))
    assert str(missing) in err and "no such file" in err
    err = one_error(capsys, main(["inspect", str(missing)]))
    assert str(missing) in err


def test_not_an_hdf5_file(tmp_path, capsys):
    path = tmp_path / "scan.cxi"
    path.write_text("just text")
    err = one_error(capsys, main(["-q", "reconstruct", str(path)]))
    assert str(path) in err and "not an HDF5 file" in err


def test_unknown_key_via_set(good_file, capsys):
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--set",
                                  "recon.epoch=3"]))
    assert "'recon.epoch'" in err and "did you mean 'epochs'" in err
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--set",
                                  "params.probes.lr=0.1"]))
    assert "params.probes" in err and "did you mean 'probe'" in err


def test_bad_values_via_set(good_file, capsys):
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--set",
                                  "recon.epochs=many"]))
    assert "'recon.epochs'" in err and "expected int" in err
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--set",
                                  "loss.likelihood=poison"]))
    assert "did you mean 'poisson'" in err
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--set", "recon"]))
    assert "key=value" in err
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--modality",
                                  "ptychoo"]))
    assert "did you mean 'ptycho'" in err


def test_unknown_key_in_a_config_file(good_file, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[model]\ngeometri = 'far_field'\n")
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--config",
                                  str(config)]))
    assert "'model.geometri'" in err and "did you mean 'geometry'" in err


def test_unknown_key_in_a_config_file_names_the_file(good_file, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[recon]\nepoch = 3\n")
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--config",
                                  str(config)]))
    assert str(config) in err


def test_bad_config_files(good_file, tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--config",
                                  str(missing)]))
    assert str(missing) in err and "not found" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[recon\n")
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--config",
                                  str(broken)]))
    assert str(broken) in err and "invalid TOML" in err


def test_resume_without_checkpoint(good_file, tmp_path, capsys):
    err = one_error(capsys, main(["-q", "reconstruct", str(good_file), "--resume",
                                  str(tmp_path)]))
    assert "checkpoint.pt" in err


def test_unknown_modality_for_config(capsys):
    err = one_error(capsys, main(["config", "nonsense"]))
    assert "unknown modality 'nonsense'" in err


def test_errors_are_clean_without_quiet(good_file, capsys):
    """Without -q, info logging is on: the error is still one line and no traceback."""
    err = one_error(capsys, main(["reconstruct", str(good_file), "--set", "recon.epoch=3"]))
    assert "did you mean 'epochs'" in err


# --- help and warnings ----------------------------------------------------------------------


def test_every_argument_has_a_help_text(capsys):
    subcommands = next(a for a in _parser()._actions if a.dest == "command").choices
    for name, sub in subcommands.items():
        for action in sub._actions:
            assert action.help, f"diffrecon {name} {action.dest}: no help text"
    with pytest.raises(SystemExit):
        main(["reconstruct", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a CXI or plain HDF5 file" in text and "(.npy, .npz, .tif/.tiff" in text
    assert "a TOML/JSON description, or a folder holding fp.toml or fp.json" in text


def test_warnings_print_as_one_clean_line(capsys):
    """A distance in millimetres (1000x too far): the scan check's ScanWarning prints as one
    'diffrecon: warning:' line, without Python's location and source line, and the Python
    API's warning display is left as it was."""
    data = diffrecon.simulate(overrides=["scan_points=30", "frame_px=32", "distance_m=1.0",
                                         "probe.numerical_aperture=8e-4",
                                         "probe.defocus_m=6e-4"])
    cxi.save(dataclasses.replace(data, probe_guess=data.truth.probe, distance_m=1e3), "mm.cxi")
    shown = warnings.showwarning
    assert main(["-q", "reconstruct", "mm.cxi", "--set", "recon.epochs=1", "--set",
                 "log.tensorboard=false", "--set", "log.report=false"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("diffrecon: warning: mm.cxi: 'entry_1/sample_1/geometry_1/"
                          "translation': neighbouring scan positions are on average ")
    assert len(err.splitlines()) == 1 and "check the units" in err
    assert "warnings.warn(" not in err and "ScanWarning" not in err
    assert warnings.showwarning is shown
