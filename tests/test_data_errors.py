"""Bad data files and arrays: each gives a DataFormatError naming the file, the key, what was
expected and (in a few words) what was found; the CLI prints it in one line with exit code 2."""

from __future__ import annotations

import fcntl
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import diffrecon
from diffrecon.cli import main
from diffrecon.data import cxi, fpm
from diffrecon.data.arrays import load_array
from diffrecon.data.checks import DataWarning
from diffrecon.data.container import DiffractionData
from diffrecon.data.results import read_results
from diffrecon.data.stem import STEMCalibration, read_array
from diffrecon.errors import DataFormatError
from diffrecon.learn.objects import load_images
from diffrecon.learn.samples import read_shards
from tests.test_data_io import edit, make_data

DATA = cxi.DATA
SOURCE = "entry_1/instrument_1/source_1/"
DETECTOR = "entry_1/instrument_1/detector_1/"
MASK = DETECTOR + "mask"


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    """A valid 6-pattern CXI scan of 8 x 8 frames, with a mask and a (2, 8, 8) probe."""
    path = tmp_path / "scan.cxi"
    cxi.save(make_data(), path)
    return path


def plain(path: Path, patterns: np.ndarray | None = None, positions: np.ndarray | None = None,
          **attrs: object) -> Path:
    """A plain-HDF5 file: 4 patterns of 8 x 8 at 4 positions, 8 keV, 2 m, 75 um pixels."""
    with h5py.File(path, "w") as handle:
        handle["patterns"] = np.full((4, 8, 8), 3.0) if patterns is None else patterns
        handle["positions_m"] = np.arange(8.0).reshape(4, 2) * 1e-7 if positions is None \
            else positions
        handle.attrs.update({"energy_ev": 8000.0, "distance_m": 2.0, "pixel_size_m": 75e-6})
        for name, value in attrs.items():
            handle.attrs[name] = value
    return path


def error_of(call: Callable[[], object]) -> DataFormatError:
    with pytest.raises(DataFormatError) as error:
        call()
    return error.value


def load_and_validate(path: Path, lazy: bool = False) -> None:
    data = cxi.load(path, lazy=lazy)
    try:
        data.validate()
    finally:
        if lazy:
            data.patterns.close()  # type: ignore[attr-defined]


def assert_cli_error(path: Path, capsys: pytest.CaptureFixture[str], *words: str) -> None:
    """``diffrecon inspect path`` exits 2 with one line naming the file and ``words``."""
    code = main(["-q", "inspect", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("diffrecon: error:") and str(path) in err
    for word in words:
        assert word in err


# 1. files that cannot be opened -------------------------------------------------------------

def test_truncated_file_is_named_by_every_reader(scan: Path, capsys) -> None:
    content = scan.read_bytes()
    scan.write_bytes(content[: len(content) // 2])
    assert h5py.is_hdf5(scan)  # the signature is there, the rest is not
    for call in (lambda: cxi.load(scan), lambda: cxi.LazyPatterns(str(scan), DATA),
                 lambda: fpm.is_fp_source(scan), lambda: diffrecon.load(scan)):
        error = error_of(call)
        assert (error.key, error.expected) == ("<file>", "a readable HDF5 file")
        assert error.found.startswith("a truncated file") and error.file == str(scan)
    assert_cli_error(scan, capsys, "truncated")


def test_truncated_files_of_the_other_readers(tmp_path: Path) -> None:
    """Results, 4D-STEM stacks, training shards and image sets open through ``open_hdf5`` too."""
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle["counts"] = np.ones((2, 4, 8, 8), np.float32)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    for call in (lambda: read_results(path), lambda: read_shards([str(path)]),
                 lambda: load_images(path),
                 lambda: read_array(path, STEMCalibration(scan_shape=[2, 4]))):
        error = error_of(call)
        assert error.key == "<file>" and error.found.startswith("a truncated file")


def test_array_files_name_their_own_keys(tmp_path: Path) -> None:
    """NPZ side values are checked like HDF5 attributes, and validation names NPZ keys."""
    path = tmp_path / "pattern.npz"
    np.savez(path, data=np.ones((8, 8)), pixel_size_m=np.array("75um"))
    error = error_of(lambda: load_array(path))
    assert (error.key, error.found) == ("pixel_size_m", "the string '75um'")
    np.savez(path, intensity=np.zeros((8, 8)), distance_m=2.0)
    error = error_of(lambda: load_array(path).validate(needs_positions=False))
    assert (error.key, error.expected) == ("intensity", "some counts")


def test_file_locked_by_a_writer_says_how_to_read_it(scan: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    fd = os.open(scan, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what HDF5 does for a writer
        error = error_of(lambda: cxi.load(scan, lazy=True))
        assert error.key == "<file>" and "another program holds it open for writing" in \
            error.found and "HDF5_USE_FILE_LOCKING=FALSE" in error.found
        assert_cli_error(scan, capsys, "HDF5_USE_FILE_LOCKING=FALSE")
    finally:
        os.close(fd)
    cxi.load(scan)  # readable once the writer is gone


def test_directory_is_called_a_directory(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "scan.cxi"
    folder.mkdir()
    for load in (cxi.load, diffrecon.load):
        error = error_of(lambda load=load: load(folder))
        assert error.key == "<file>" and error.found == "a directory"
    assert_cli_error(folder, capsys, "a directory")


# 2-4. the patterns themselves ---------------------------------------------------------------

def test_broken_external_link_names_the_key_and_missing_file(scan: Path, capsys) -> None:
    with h5py.File(scan, "r+") as handle:
        del handle[DATA]
        handle[DATA] = h5py.ExternalLink("missing_raw.h5", "/data")
    for lazy in (False, True):
        error = error_of(lambda lazy=lazy: cxi.load(scan, lazy=lazy))
        assert error.key == DATA and "missing_raw.h5" in error.found
        assert "diffraction patterns" in error.expected
    assert_cli_error(scan, capsys, DATA, "missing_raw.h5")


def test_complex_patterns_are_rejected_before_reading(scan: Path) -> None:
    edit(scan, entry_1__data_1__data=np.ones((6, 8, 8), np.complex64))
    for lazy in (False, True):
        error = error_of(lambda lazy=lazy: cxi.load(scan, lazy=lazy))
        assert error.key == DATA and error.expected == "real counts (integer or float)"
        assert "complex" in error.found
    in_memory = make_data()
    in_memory.patterns = in_memory.patterns.astype(np.complex64)
    assert "complex" in error_of(in_memory.validate).found


@pytest.mark.parametrize("lazy", [False, True])
def test_zero_patterns_are_rejected(scan: Path, lazy: bool) -> None:
    edit(scan, entry_1__data_1__data=np.zeros((0, 8, 8), np.float32))
    error = error_of(lambda: load_and_validate(scan, lazy))
    assert error.key == DATA and error.expected == "at least one pattern"


# 5 and 10. geometry values ------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "found"), [
    ("energy_ev", 0.0, "0"),
    ("energy_ev", -8000.0, "-8000"),
    ("energy_ev", "8 keV", "the string '8 keV'"),
    ("energy_ev", np.nan, "NaN"),
    ("wavelength_m", np.inf, "Inf"),
    ("distance_m", np.array([2.0, 3.0]), "(2, 3)"),
    ("distance_m", 0.0, "0"),
    ("pixel_size_m", "75um", "the string '75um'"),
    ("pixel_size_m", np.array([1e-4, 1e-4, 1e-4]), "(0.0001, 0.0001, 0.0001)"),
    ("pixel_size_m", np.array([75e-6, -75e-6]), "(7.5e-05, -7.5e-05)"),
])
def test_plain_root_attributes_are_checked(tmp_path: Path, name: str, value: object,
                                           found: str) -> None:
    path = plain(tmp_path / "plain.h5", **{name: value})
    error = error_of(lambda: cxi.load(path))
    assert error.key == f"@{name}" and "positive number" in error.expected
    assert error.found == found and "np." not in str(error)


def test_plain_attribute_error_on_the_command_line(tmp_path: Path, capsys) -> None:
    assert_cli_error(plain(tmp_path / "plain.h5", energy_ev=0.0), capsys, "@energy_ev",
                     "positive number")


@pytest.mark.parametrize(("value", "found"), [
    (np.bytes_(b"8 keV"), "the string '8 keV'"), (np.nan, "NaN"), (0.0, "0")])
def test_cxi_energy_found_in_words(scan: Path, value: object, found: str) -> None:
    edit(scan, entry_1__instrument_1__source_1__energy=value)
    error = error_of(lambda: cxi.load(scan))
    assert (error.key, error.expected, error.found) == (SOURCE + "energy", "a positive number",
                                                        found)


# 13. energies in joules out of any physical range -------------------------------------------

def test_energy_labelled_joules_but_in_ev_suggests_the_units(scan: Path) -> None:
    edit(scan, entry_1__instrument_1__source_1__energy=8000.0)
    with h5py.File(scan, "r+") as handle:
        handle[SOURCE + "energy"].attrs["units"] = "J"
    error = error_of(lambda: cxi.load(scan))
    assert error.key == SOURCE + "energy" and "units attribute" in error.expected
    assert error.found == "8000 J"
    with h5py.File(scan, "r+") as handle:
        handle[SOURCE + "energy"].attrs["units"] = "eV"
    np.testing.assert_allclose(cxi.load(scan).energy_ev, 8000.0, rtol=1e-6)
    with h5py.File(scan, "r+") as handle:
        handle[SOURCE + "energy"].attrs["units"] = "MeV"
    error = error_of(lambda: cxi.load(scan))
    assert error.key == SOURCE + "energy@units" and "'eV'" in error.expected


# 6. probe guesses ---------------------------------------------------------------------------

def test_probe_guess_of_the_wrong_shape_or_type(scan: Path, tmp_path: Path) -> None:
    edit(scan, entry_1__instrument_1__source_1__illumination=np.ones((4, 4), np.complex64))
    error = error_of(lambda: load_and_validate(scan))
    assert error.key == SOURCE + "illumination" and error.found == "shape (4, 4)"
    assert error.expected.startswith("(H, W) or (M, H, W) complex with the frames' (H, W)")
    path = plain(tmp_path / "plain.h5")
    with h5py.File(path, "a") as handle:
        handle["probe"] = np.ones((2, 4, 4), np.complex64)
    assert error_of(lambda: load_and_validate(path)).key == "probe"
    with h5py.File(path, "a") as handle:
        del handle["probe"]
        handle["probe"] = b"gaussian"
    error = error_of(lambda: cxi.load(path))
    assert error.key == "probe" and error.found == "the string 'gaussian'"
    assert "complex" in error.expected


# 7. nothing to fit --------------------------------------------------------------------------

@pytest.mark.parametrize("lazy", [False, True])
def test_all_zero_data_is_rejected_in_the_one_pass(scan: Path, lazy: bool,
                                                   monkeypatch) -> None:
    edit(scan, entry_1__data_1__data=np.zeros((6, 8, 8), np.float32))
    data = cxi.load(scan, lazy=lazy)
    passes = []
    blocks = DiffractionData.blocks

    def counted(self: DiffractionData, *args: object, **kwargs: object):
        passes.append(1)
        return blocks(self, *args, **kwargs)

    monkeypatch.setattr(DiffractionData, "blocks", counted)
    error = error_of(data.validate)
    assert (error.key, error.expected) == (DATA, "some counts") and passes == [1]
    if lazy:
        data.patterns.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("mask", [np.ones((8, 8), np.uint8), np.full((8, 8), np.nan)])
def test_every_pixel_masked_is_rejected(scan: Path, mask: np.ndarray, capsys) -> None:
    edit(scan, entry_1__instrument_1__detector_1__mask=mask)
    error = error_of(lambda: load_and_validate(scan, lazy=True))
    assert (error.key, error.expected) == (MASK, "at least one trusted pixel (mask 0)")
    assert_cli_error(scan, capsys, MASK, "trusted pixel")


# 8. plain files are named by their own keys -------------------------------------------------

def test_plain_layout_messages_name_plain_keys(tmp_path: Path) -> None:
    nan = np.full((4, 8, 8), 3.0)
    nan[1, 2, 2] = np.nan
    cases = {
        "positions_m": plain(tmp_path / "count.h5", positions=np.zeros((3, 2))),
        "patterns": plain(tmp_path / "nan.h5", patterns=nan),
    }
    for key, path in cases.items():
        error = error_of(lambda path=path: load_and_validate(path))
        assert error.key == key, error
    path = plain(tmp_path / "nopos.h5")
    with h5py.File(path, "a") as handle:
        del handle["positions_m"]
        handle["mask"] = np.zeros((4, 4), np.uint8)
    error = error_of(lambda: load_and_validate(path))
    assert error.key == "positions_m" and "scan positions" in error.expected
    data = cxi.load(path)
    assert error_of(lambda: data.validate(needs_positions=False)).key == "mask"
    data.valid = np.zeros((8, 8), bool)
    assert error_of(lambda: data.validate(needs_positions=False)).key == "mask"
    data.valid, data.distance_m = None, 0.0
    assert error_of(lambda: data.validate(needs_positions=False)).key == "@distance_m"
    memory = make_data()  # built in Python: CXI names
    memory.positions_m = memory.positions_m[:3]
    assert error_of(memory.validate).key == cxi.TRANSLATION


# 9. one frame where a scan is needed --------------------------------------------------------

def test_single_frame_with_many_positions_says_so(scan: Path, capsys) -> None:
    edit(scan, entry_1__data_1__data=np.ones((8, 8), np.float32))
    error = error_of(lambda: load_and_validate(scan))
    assert error.key == DATA and error.found == "one (8, 8) frame"
    assert error.expected.startswith("(N, H, W) patterns, one per scan position (6 in ")
    assert_cli_error(scan, capsys, "one (8, 8) frame")


# 12. arrays from Python ---------------------------------------------------------------------

def test_patterns_given_as_a_list() -> None:
    reference = make_data()
    data = DiffractionData(patterns=reference.patterns.tolist(), wavelength_m=1e-10,
                           distance_m=1.0, detector_pixel_size_m=(5e-5, 5e-5),
                           positions_m=reference.positions_m)
    assert isinstance(data.patterns, np.ndarray) and data.patterns.shape == (6, 8, 8)
    data.validate()
    with pytest.raises(TypeError, match=r"patterns: expected an \(N, H, W\) array"):
        DiffractionData(patterns=[np.ones((8, 8)), np.ones((4, 4))], wavelength_m=1e-10,
                        distance_m=1.0, detector_pixel_size_m=(5e-5, 5e-5))


def test_cdi_needs_one_illumination_of_the_data_shape() -> None:
    """Probe modes pass ``validate`` (ptychography uses them) but CDI takes one illumination."""
    from diffrecon.models.cdi import CDI, CDIConfig

    data = DiffractionData(patterns=np.ones((1, 8, 8), np.float32), wavelength_m=1e-10,
                           distance_m=1.0, detector_pixel_size_m=(75e-6, 75e-6),
                           probe_guess=np.ones((2, 8, 8), np.complex64), source="cdi.h5",
                           source_keys={"probe_guess": "probe"})
    data.validate(needs_positions=False)
    error = error_of(lambda: CDI.from_data(data, CDIConfig()))
    assert (error.key, error.found) == ("probe", "shape (2, 8, 8)")
    assert "(8, 8)" in error.expected


def test_a_compression_filter_missing_here_is_named(tmp_path: Path, monkeypatch) -> None:
    """Eiger data compressed with bitshuffle/LZ4 fail on the first read where the filter is
    not installed; the check names the filter before that (gzip stands in, made unavailable)."""
    path = plain(tmp_path / "eiger.h5")
    with h5py.File(path, "a") as handle:
        del handle["patterns"]
        handle.create_dataset("patterns", data=np.full((4, 8, 8), 3.0), compression="gzip")
    load_and_validate(path)  # readable while the filter is there
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: code != h5py.h5z.FILTER_DEFLATE)
    for lazy in (False, True):
        error = error_of(lambda lazy=lazy: cxi.load(path, lazy=lazy))
        assert error.key == "patterns" and "'deflate' filter" in error.found
        assert "pip install hdf5plugin" in error.found


def test_numbers_written_as_text_are_read(tmp_path: Path) -> None:
    """Some writers store attributes as strings: '8000' is 8000, '8 keV' stays an error."""
    data = cxi.load(plain(tmp_path / "text.h5", energy_ev="8000", pixel_size_m=b"75e-6"))
    assert data.energy_ev == pytest.approx(8000.0)
    assert data.detector_pixel_size_m == (75e-6, 75e-6)


def test_energy_and_wavelength_must_agree(tmp_path: Path) -> None:
    error = error_of(lambda: cxi.load(plain(tmp_path / "both.h5", wavelength_m=1e-9)))
    assert error.key == "@wavelength_m" and "or only one of the two" in error.expected
    assert "8000 eV" in error.expected and error.found == "1e-09 m"
    agreeing = cxi.load(plain(tmp_path / "same.h5", wavelength_m=1.549802e-10))
    assert agreeing.wavelength_m == pytest.approx(1.549802e-10)


@pytest.mark.parametrize(("content", "found"), [
    (b"", "an empty file"), (b"not a pickle at all", "a damaged or truncated file of 19 bytes")])
def test_a_damaged_checkpoint_is_described(tmp_path: Path, content: bytes, found: str) -> None:
    from diffrecon.recon.checkpoint import load_checkpoint

    (tmp_path / "checkpoint.pt").write_bytes(content)
    error = error_of(lambda: load_checkpoint(tmp_path))
    assert error.expected == "a checkpoint written by diffrecon"
    assert error.found.startswith(found) and "\n" not in error.found


def test_detector_flag_values_are_reported(tmp_path: Path) -> None:
    """Eiger writes 2^32 - 1 (2^16 - 1 in 16-bit mode) into bad or saturated pixels: trusted
    pixels at the type's largest value get a warning with their number."""
    counts = np.full((4, 8, 8), 3, np.uint32)
    counts[1, 2, 3] = counts[2, 5, 5] = np.iinfo(np.uint32).max
    path = plain(tmp_path / "eiger.h5", patterns=counts)
    data = cxi.load(path, lazy=True)
    with pytest.warns(DataWarning, match=r"2 trusted pixel values equal 4294967295, the "
                                         r"largest uint32"):
        data.validate()
    data.patterns.close()  # type: ignore[attr-defined]
    clean = plain(tmp_path / "clean.h5", patterns=np.full((4, 8, 8), 3, np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        load_and_validate(clean, lazy=True)
