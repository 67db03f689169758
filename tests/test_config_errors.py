"""Bad run folders, resumes, config values, devices and overrides: a clear error naming the
folder or key and what was expected, raised before the data are read or the run starts; the
CLI prints it in one or two lines with exit code 2. Results that cannot be written at the end
of a run go to a fallback folder, and the error says where."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch

import diffrecon
from diffrecon import api, runfolder
from diffrecon import config as cfg
from diffrecon.cli import main
from diffrecon.config import doc
from diffrecon.data import cxi
from diffrecon.errors import ConfigError, DataFormatError, DiffreconError, RunFolderError
from diffrecon.learn.train import load_train_config
from diffrecon.recon import callbacks
from diffrecon.recon.checkpoint import load_checkpoint, save_checkpoint
from diffrecon.runconfig import build_config, load_config
from diffrecon.runfolder import RunFolder

SCAN = ["scan_points=30", "frame_px=32", "distance_m=1.0", "probe.numerical_aperture=8e-4",
        "probe.defocus_m=6e-4"]
QUIET = ["recon.epochs=1", "log.progress=false", "log.metrics=false", "log.tensorboard=false",
         "log.report=false"]


def scan_file(path: Path, *changes: str) -> Path:
    """A tiny simulated scan as CXI, with its true probe as the probe guess (so a run skips the
    probe trials and takes a fraction of a second)."""
    data = diffrecon.simulate(overrides=[*SCAN, *changes])
    cxi.save(dataclasses.replace(data, probe_guess=data.truth.probe), path)
    return path


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scans")
    return {"a": scan_file(folder / "a.cxi"), "b": scan_file(folder / "b.cxi", "scan_points=20")}


@pytest.fixture(scope="module")
def finished_run(scans, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "a"
    diffrecon.reconstruct(scans["a"], "ptycho", out=out, overrides=QUIET)
    return out


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI, expecting exit code 2 and one or two lines of error without a traceback."""
    code = main(["-q", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("diffrecon: error:") and "Traceback" not in err
    assert len(err.splitlines()) <= 2
    return err


# --- run folder -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_unwritable_run_folder_fails_before_the_data_are_read(where, tmp_path, capsys):
    blocker = tmp_path / "notadir"
    blocker.write_text("")
    out = blocker if where == "is a file" else blocker / "run"
    never_read = tmp_path / "never-read.cxi"  # no "file not found": the folder comes first
    with pytest.raises(ConfigError) as info:
        diffrecon.reconstruct(never_read, "ptycho", out=out)
    assert f"run folder '{out}'" in str(info.value)
    assert f"'{blocker}' is a file, not a folder" in str(info.value)
    err = cli_error(capsys, "reconstruct", str(never_read), "--out", str(out))
    assert f"run folder '{out}'" in err and "not a folder" in err
    assert f"run folder '{out}'" in cli_error(capsys, "demo", "--out", str(out))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_run_folder_the_system_refuses_names_the_reason(tmp_path):
    with pytest.raises(ConfigError, match=r"run folder '/proc/diffrecon-test/run': cannot "
                                          r"create and write it \(\w"):
        diffrecon.reconstruct(tmp_path / "never-read.cxi", out="/proc/diffrecon-test/run")


def disk_full_in(folder: Path, write):
    """``write`` (path first), failing with ENOSPC for files directly in ``folder``."""
    def write_unless_in_folder(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, *args, **kwargs)

    return write_unless_in_folder


def test_results_that_cannot_be_written_go_to_a_fallback_folder(scans, tmp_path, monkeypatch):
    out, temporary = tmp_path / "run", tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    monkeypatch.setattr(runfolder, "write_results", disk_full_in(out, runfolder.write_results))
    monkeypatch.setattr(callbacks, "save_checkpoint", disk_full_in(out, callbacks.save_checkpoint))
    with pytest.raises(RunFolderError) as info:
        diffrecon.reconstruct(scans["a"], "ptycho", out=out, overrides=QUIET)
    (fallback,) = temporary.iterdir()
    message = str(info.value)
    assert f"run folder '{out}': could not write checkpoint.pt, reconstruction.h5" in message
    assert os.strerror(errno.ENOSPC) in message and str(fallback) in message
    assert load_checkpoint(fallback)["epoch"] == 1 and (fallback / "reconstruction.h5").exists()
    assert (out / "config.toml").exists()  # what could be written is in the run folder
    assert isinstance(info.value.result, diffrecon.Result)


def test_a_file_written_nowhere_is_reported_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    folder = RunFolder(tmp_path / "run")
    assert folder.write("reconstruction.h5", full) is None
    with pytest.raises(RunFolderError, match=r"could not write reconstruction\.h5 \(No space "
                                             r"left on device\); lost reconstruction\.h5"):
        folder.raise_failures()


# --- resume ---------------------------------------------------------------------------------


def test_resume_with_another_scan_names_parameter_and_shapes(scans, finished_run, capsys):
    err = cli_error(capsys, "reconstruct", str(scans["b"]), "--resume", str(finished_run),
                    "--set", "recon.epochs=2")
    assert str(finished_run / "checkpoint.pt") in err and "another scan" in err
    assert re.search(r"parameter '[\w.]+' has shape \([\d, ]+\) in the checkpoint but "
                     r"\([\d, ]+\) for this data", err)


def test_resume_as_another_modality_says_which(scans, finished_run, capsys):
    err = cli_error(capsys, "reconstruct", str(scans["a"]), "--resume", str(finished_run),
                    "--modality", "cdi")
    assert str(finished_run / "checkpoint.pt") in err
    assert "made with modality 'ptycho'" in err and "cannot be resumed as 'cdi'" in err


def test_resume_with_a_config_file_is_refused_not_ignored(scans, finished_run, tmp_path,
                                                          capsys):
    """A resumed run keeps its folder's config; a --config given too used to be ignored."""
    toml = tmp_path / "other.toml"
    toml.write_text("[recon]\nepochs = 5\n")
    err = cli_error(capsys, "reconstruct", str(scans["a"]), "--resume", str(finished_run),
                    "--config", str(toml))
    assert "give either a config (--config) or resume (--resume)" in err


def test_resume_from_a_checkpoint_without_run_config(scans, tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"net": {}, "epoch": 3})  # e.g. a training run
    with pytest.raises(DataFormatError, match=r"checkpoint\.pt: 'config': expected a checkpoint "
                                              r"written by 'diffrecon reconstruct'"):
        diffrecon.reconstruct(scans["a"], resume=tmp_path)


# --- config values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "override", "key", "expected"),
    [
        ("ptycho", "recon.epochs=0", "recon.epochs", "an integer >= 1"),
        ("ptycho", "recon.epochs=-1", "recon.epochs", "an integer >= 1"),
        ("ptycho", "recon.batch_size=-4", "recon.batch_size", "an integer >= 0"),
        ("ptycho", "model.probe_modes=0", "model.probe_modes", "an integer >= 1"),
        ("ptycho", "params.object.lr=-1", "params.object.lr", "a number >= 0"),
        ("ptycho", "params.probe.lr=nan", "params.probe.lr", "a number >= 0"),
        ("ptycho", "params.positions.every=0", "params.positions.every", "an integer >= 1"),
        ("ptycho", "log.image_every=0", "log.image_every", "an integer >= 1"),
        ("ptycho", "recon.device=gpu", "recon.device",
         "a torch device: cpu, cuda, cuda:<index> (e.g. cuda:1) or mps"),
        ("ptycho", "model.padding_px=-1", "model.padding_px", "an integer >= 0"),
        ("ptycho", "model.object_amplitude_max=0", "model.object_amplitude_max", "a number > 0"),
        ("cdi", "model.support_threshold=1.5", "model.support_threshold", "a number in [0, 1]"),
        ("cdi", "model.shrinkwrap_every=-1", "model.shrinkwrap_every", "an integer >= 0"),
        ("multislice", "model.slice_thickness_m=0", "model.slice_thickness_m", "a number > 0"),
        ("multislice", "model.convergence_mrad=-1", "model.convergence_mrad", "a number >= 0"),
        ("fourier_ptycho", "model.zernike_max=3", "model.zernike_max", "an integer >= 4"),
        ("fourier_ptycho", "model.numerical_aperture=-0.1", "model.numerical_aperture",
         "a number > 0"),
        ("fourier_ptycho", "model.upsampling=0", "model.upsampling", "an integer >= 1"),
        ("fourier_ptycho_multislice", "model.slice_thickness_m=-1e-6", "model.slice_thickness_m",
         "a number > 0"),
        ("bragg", "model.rocking_step_deg=0", "model.rocking_step_deg", "a non-zero number"),
        ("bragg", "model.shrinkwrap_stop=2", "model.shrinkwrap_stop", "a number in [0, 1]"),
        ("bragg", "model.shrinkwrap_threshold=-0.1", "model.shrinkwrap_threshold",
         "a number >= 0"),
        ("ptycho_tomo", "model.atom_threshold=2", "model.atom_threshold", "a number in [0, 1]"),
        ("ptycho", "algorithm.accumulate_batches=0", "algorithm.accumulate_batches",
         "an integer >= 1"),
        ("cdi", "algorithm.feedback=-0.5", "algorithm.feedback", "a number >= 0"),
        ("ptycho", 'loss.regularizers=[{name = "tv", weight = -1.0}]',
         "loss.regularizers[0].weight", "a number >= 0"),
    ],
)
def test_out_of_range_value_names_key_and_expectation(modality, override, key, expected):
    with pytest.raises(ConfigError) as info:
        build_config(modality=modality, overrides=[override])
    assert f"config key '{key}': expected {expected}, found" in str(info.value)


@pytest.mark.parametrize(
    ("modality", "override"),
    [("cdi", "model.shrinkwrap_every=0"), ("ptycho_tomo", "model.depth_px=0"),
     ("multislice", "model.soft_edge_px=0"), ("multislice", "model.convergence_mrad=0"),
     ("fourier_ptycho", "model.zernike_hop_waves=0"), ("bragg", "model.rocking_step_deg=-0.01"),
     ("ptycho", "model.object_amplitude_max=none"), ("ptycho", "algorithm.alpha=0")],
)
def test_documented_special_values_stay_valid(modality, override):
    build_config(modality=modality, overrides=[override])


def test_out_of_range_value_in_a_toml_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("[recon]\nbatch_size = -4\n")
    with pytest.raises(ConfigError, match=r"run\.toml: config key 'recon\.batch_size': expected "
                                          r"an integer >= 0, found -4"):
        load_config(path)
    err = cli_error(capsys, "reconstruct", str(tmp_path / "never-read.cxi"), "--config",
                    str(path))
    assert "recon.batch_size" in err and ">= 0" in err


@dataclasses.dataclass
class Counts:
    probe_modes: int = 1
    slices: int = doc(1, "object slices")
    margin_px: int = doc(0, "margin", minimum=-2)
    fraction: float = doc(0.5, "a fraction", minimum=0, maximum=1)
    thickness_m: float = doc(1e-9, "slice thickness", check=cfg.positive)


def test_undeclared_counts_follow_the_naming_convention_and_declared_bounds_win():
    with pytest.raises(ConfigError, match=r"'probe_modes': expected an integer >= 1, found 0$"):
        cfg.from_dict(Counts, {"probe_modes": 0})
    with pytest.raises(ConfigError, match=r"'slices': expected an integer >= 1, found 0 "
                                          r"\(object slices\)"):
        cfg.from_dict(Counts, {"slices": 0})
    with pytest.raises(ConfigError, match=r"'margin_px': expected an integer >= -2"):
        cfg.from_dict(Counts, {"margin_px": -3})
    with pytest.raises(ConfigError, match=r"'fraction': expected a number in \[0, 1\], "
                                          r"found 1\.5 \(a fraction\)"):
        cfg.from_dict(Counts, {"fraction": 1.5})
    with pytest.raises(ConfigError, match=r"'thickness_m': expected a number > 0, found 0\.0"):
        cfg.from_dict(Counts, {"thickness_m": 0})
    assert cfg.from_dict(Counts, {"probe_modes": 2, "margin_px": -1}).margin_px == -1


# --- devices --------------------------------------------------------------------------------


def test_cuda_without_cuda_names_the_torch_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = cli_error(capsys, "reconstruct", str(tmp_path / "never-read.cxi"), "--device", "cuda",
                    "--out", str(tmp_path / "run"))
    assert "recon.device 'cuda'" in err and "torch.cuda.is_available() is False" in err
    assert torch.__version__ in err


def test_unknown_device_lists_the_valid_ones(tmp_path, capsys):
    never_read = tmp_path / "never-read.cxi"
    err = cli_error(capsys, "reconstruct", str(never_read), "--device", "gpu")
    assert "'recon.device'" in err and "cpu, cuda, cuda:<index>" in err and "'gpu'" in err
    with pytest.raises(ConfigError, match=r"recon\.device.*cpu, cuda"):
        api.prefer_jemalloc(never_read, "gpu")  # the command line's check before reconstruct


# --- overrides ------------------------------------------------------------------------------


def test_a_single_override_string_is_one_override(scans):
    assert build_config(overrides="recon.epochs=3").recon.epochs == 3
    quiet = {"log": {"metrics": False, "progress": False}}
    result = diffrecon.reconstruct(scans["a"], "ptycho", quiet, overrides="recon.epochs=1")
    assert len(result.history["loss/total"]) == 1
    with pytest.raises(ConfigError, match=r"overrides: expected 'key=value' strings"):
        build_config(overrides=[("recon.epochs", 3)])
    assert load_train_config(overrides="train.epochs=3").train.epochs == 3  # diffrecon.train


def test_run_folder_error_is_one_of_ours_and_an_os_error():
    assert issubclass(RunFolderError, DiffreconError) and issubclass(RunFolderError, OSError)
    assert runfolder.RunFolderError is RunFolderError  # still importable from there
