"""Data I/O: CXI and plain-HDF5 reading, CXI writing, lazy patterns, result files, errors."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import diffrecon
from diffrecon.data import cxi
from diffrecon.data.checks import DataWarning
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.dataset import PatternBatches, prefetched, read_frames
from diffrecon.data.results import read_results, write_results
from diffrecon.errors import DataFormatError
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.physics.optics import electron_wavelength_m

WAVELENGTH_M = 1.55e-10  # about 8 keV


def make_data(n: int = 6, shape: tuple[int, int] = (8, 8), seed: int = 0) -> DiffractionData:
    rng = np.random.default_rng(seed)
    valid = np.ones(shape, dtype=bool)
    valid[0, :2] = False
    probe = (rng.standard_normal((2, *shape)) + 1j * rng.standard_normal((2, *shape))).astype(
        np.complex64
    )
    truth = Truth(
        object=np.exp(1j * rng.standard_normal((1, 12, 12))).astype(np.complex64),
        probe=probe,
        positions_m=rng.uniform(0, 1e-6, (n, 2)),
        pixel_size_m=(1e-8, 2e-8),
        origin_m=(-3e-7, -4e-7),
    )
    return DiffractionData(
        patterns=rng.poisson(20.0, (n, *shape)).astype(np.float32),
        wavelength_m=WAVELENGTH_M,
        distance_m=2.5,
        detector_pixel_size_m=(75e-6, 55e-6),
        positions_m=np.stack([np.linspace(0, 1e-6, n), np.linspace(5e-6, 8e-6, n)], axis=1),
        valid=valid,
        probe_guess=probe,
        truth=truth,
        metadata={"sample": "test pattern", "instrument": "none"},
    )


@pytest.fixture
def cxi_file(tmp_path: Path) -> Path:
    path = tmp_path / "scan.cxi"
    cxi.save(make_data(), path)
    return path


def edit(path: Path, delete: tuple[str, ...] = (), **datasets: np.ndarray) -> Path:
    """Delete keys and (re)write datasets given as ``key__with__slashes=value``."""
    with h5py.File(path, "r+") as handle:
        for key in delete:
            del handle[key]
        for name, value in datasets.items():
            key = name.replace("__", "/")
            if key in handle:
                del handle[key]
            handle.create_dataset(key, data=value)
    return path


def test_cxi_round_trip(cxi_file: Path) -> None:
    original = make_data()
    loaded = cxi.load(cxi_file)
    np.testing.assert_array_equal(loaded.patterns, original.patterns)
    assert loaded.patterns.dtype == np.float32
    np.testing.assert_allclose(loaded.positions_m, original.positions_m)
    np.testing.assert_allclose(loaded.wavelength_m, WAVELENGTH_M, rtol=1e-12)
    assert loaded.distance_m == 2.5
    assert loaded.detector_pixel_size_m == (75e-6, 55e-6)
    np.testing.assert_array_equal(loaded.valid, original.valid)
    np.testing.assert_array_equal(loaded.probe_guess, original.probe_guess)
    assert loaded.metadata["sample"] == "test pattern"
    assert loaded.source == str(cxi_file)
    truth, expected = loaded.truth, original.truth
    assert truth is not None and expected is not None
    np.testing.assert_array_equal(truth.object, expected.object)
    np.testing.assert_array_equal(truth.probe, expected.probe)
    np.testing.assert_allclose(truth.positions_m, expected.positions_m)
    assert truth.pixel_size_m == (1e-8, 2e-8) and truth.origin_m == (-3e-7, -4e-7)
    loaded.validate()


def test_cxi_file_conventions(cxi_file: Path) -> None:
    """On disk: translation is x, y, z; energy in joules; mask non-zero = bad."""
    original = make_data()
    with h5py.File(cxi_file, "r") as handle:
        translation = handle[cxi.TRANSLATION][()]
        energy_j = float(handle["entry_1/instrument_1/source_1/energy"][()])
        mask = handle["entry_1/instrument_1/detector_1/mask"][()]
        assert int(handle.attrs["cxi_version"]) == 150
    np.testing.assert_allclose(translation[:, 0], original.positions_m[:, 1])
    np.testing.assert_allclose(translation[:, 1], original.positions_m[:, 0])
    np.testing.assert_array_equal(translation[:, 2], 0.0)
    np.testing.assert_allclose(energy_j, 1.98644586e-25 / WAVELENGTH_M)
    assert mask.dtype == np.uint8 and mask[0, 0] == 1 and mask.sum() == 2


def test_cxi_energy_in_ev_and_wavelength_key(cxi_file: Path) -> None:
    edit(cxi_file, entry_1__instrument_1__source_1__energy=np.float64(8000.0))
    with pytest.warns(DataWarning, match="energy 8000 without a units attribute, taken as "
                                         "8000 eV"):
        loaded = cxi.load(cxi_file)
    np.testing.assert_allclose(loaded.energy_ev, 8000.0, rtol=1e-6)
    assert "eV" in loaded.metadata["energy_note"]
    source = "entry_1/instrument_1/source_1/"
    edit(cxi_file, (source + "energy",), entry_1__instrument_1__source_1__wavelength=1e-10)
    assert cxi.load(cxi_file).wavelength_m == 1e-10


def test_cxi_single_pattern_and_data_translation(tmp_path: Path) -> None:
    path = tmp_path / "cdi.cxi"
    data = make_data(n=1)
    data.positions_m = None
    cxi.save(data, path)
    edit(path, entry_1__data_1__data=np.ones((8, 8)))
    loaded = cxi.load(path, lazy=True)
    assert loaded.patterns.shape == (1, 8, 8) and loaded.positions_m is None
    loaded.validate(needs_positions=False)
    edit(path, entry_1__data_1__translation=np.array([[1.0, 2.0, 0.0]]))
    np.testing.assert_array_equal(cxi.load(path).positions_m, [[2.0, 1.0]])


def test_plain_hdf5_layout(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    patterns = np.arange(4 * 6 * 6, dtype=np.uint16).reshape(4, 6, 6)
    positions = np.array([[0.0, 1e-6], [0.0, 2e-6], [1e-6, 1e-6], [1e-6, 2e-6]])
    mask = np.zeros((6, 6), np.uint8)
    mask[2, 3] = 7
    with h5py.File(path, "w") as handle:
        handle["patterns"], handle["positions_m"], handle["mask"] = patterns, positions, mask
        handle["probe"] = np.ones((6, 6), np.complex64)
        handle.attrs.update({"energy_ev": 8000.0, "distance_m": 1.0, "pixel_size_m": 5e-5})
        handle.attrs["note"] = "hand made"
    loaded = cxi.load(path)
    np.testing.assert_array_equal(loaded.patterns, patterns.astype(np.float32))
    np.testing.assert_array_equal(loaded.positions_m, positions)
    assert loaded.valid is not None and loaded.valid.sum() == 35 and not loaded.valid[2, 3]
    np.testing.assert_allclose(loaded.energy_ev, 8000.0, rtol=1e-6)
    assert loaded.detector_pixel_size_m == (5e-5, 5e-5)
    assert loaded.probe_guess is not None and loaded.metadata == {"note": "hand made"}
    loaded.validate()
    with h5py.File(path, "r+") as handle:
        del handle.attrs["energy_ev"]
        handle.attrs["wavelength_m"] = 2e-10
        handle.attrs["pixel_size_m"] = (5e-5, 6e-5)
    loaded = cxi.load(path)
    assert loaded.wavelength_m == 2e-10 and loaded.detector_pixel_size_m == (5e-5, 6e-5)
    with h5py.File(path, "r+") as handle:
        del handle.attrs["distance_m"]
    with pytest.raises(DataFormatError, match="distance_m"):
        cxi.load(path)


def test_lazy_equals_eager_and_fancy_indexing(cxi_file: Path) -> None:
    eager = cxi.load(cxi_file).patterns
    lazy_data = cxi.load(cxi_file, lazy=True)
    lazy = lazy_data.patterns
    assert isinstance(lazy, cxi.LazyPatterns)
    assert lazy.shape == eager.shape and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy[:], eager)
    np.testing.assert_array_equal(np.asarray(lazy), eager)
    np.testing.assert_array_equal(lazy[2], eager[2])
    np.testing.assert_array_equal(lazy[-1], eager[-1])
    np.testing.assert_array_equal(lazy[1:5:2], eager[1:5:2])
    np.testing.assert_array_equal(lazy[::-2], eager[::-2])
    for rows in ([5, 0, 3], [4, 4, 1], [0, 5]):
        np.testing.assert_array_equal(lazy[np.array(rows)], eager[rows])
    np.testing.assert_array_equal(lazy[np.array([3, 1]), 2:4], eager[[3, 1], 2:4])
    assert lazy[np.array([], dtype=int)].shape == (0, 8, 8)
    with pytest.raises(IndexError):
        lazy[np.array([6])]
    lazy_data.validate()
    assert cxi.inspect_text(lazy_data) == cxi.inspect_text(cxi.load(cxi_file))
    clone = pickle.loads(pickle.dumps(lazy))
    np.testing.assert_array_equal(clone[np.array([2, 0])], eager[[2, 0]])
    clone.close()
    lazy.close()


def test_lazy_blocks_convert_stored_counts_into_one_reused_buffer(cxi_file: Path) -> None:
    """Integer counts stored in the file (uint16, as many detectors write) come out of
    ``blocks`` as float32, equal to the eager copy, through one buffer for every block."""
    eager = cxi.load(cxi_file).patterns
    with h5py.File(cxi_file, "r+") as handle:
        del handle[cxi.DATA]
        handle.create_dataset(cxi.DATA, data=np.round(eager).astype(np.uint16),
                              chunks=(1, *eager.shape[1:]), compression="gzip")
    lazy = cxi.load(cxi_file, lazy=True)
    frame_bytes = 4 * eager[0].size
    blocks = [(start, block.copy(), block) for start, block in
              lazy.blocks(budget_bytes=2 * frame_bytes)]  # 2 frames a block, a short last one
    assert [start for start, _, _ in blocks] == list(range(0, len(eager), 2))
    stacked = np.concatenate([copy for _, copy, _ in blocks])
    assert stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked, np.round(eager))
    assert all(np.shares_memory(block, blocks[0][2]) for _, _, block in blocks)
    in_memory = cxi.load(cxi_file)  # an array source yields its own slices, no buffer
    np.testing.assert_array_equal(
        np.concatenate([b for _, b in in_memory.blocks(budget_bytes=frame_bytes)]),
        np.round(eager))
    lazy.patterns.close()  # type: ignore[attr-defined]


def test_save_lazy_data_over_its_own_file(cxi_file: Path) -> None:
    lazy_data = cxi.load(cxi_file, lazy=True)
    cxi.save(lazy_data, cxi_file)
    lazy_data.patterns.close()  # type: ignore[attr-defined]
    np.testing.assert_array_equal(cxi.load(cxi_file).patterns, make_data().patterns)
    assert sorted(p.name for p in cxi_file.parent.iterdir()) == ["scan.cxi"]


SOURCE = "entry_1/instrument_1/source_1/"
DETECTOR = "entry_1/instrument_1/detector_1/"


@pytest.mark.parametrize(
    ("delete", "replace", "key"),
    [
        (("entry_1/data_1/data",), {}, "entry_1/data_1/data"),
        ((SOURCE + "energy",), {}, SOURCE + "energy"),
        ((DETECTOR + "distance",), {}, DETECTOR + "distance"),
        ((DETECTOR + "x_pixel_size", DETECTOR + "y_pixel_size"), {}, DETECTOR + "y_pixel_size"),
        ((), {"entry_1__sample_1__geometry_1__translation": np.zeros((6, 2))}, cxi.TRANSLATION),
        (
            (),
            {"entry_1__instrument_1__detector_1__distance": np.arange(3.0)},
            DETECTOR + "distance",
        ),
        ((), {"entry_1__instrument_1__source_1__energy": -1.0}, SOURCE + "energy"),
        ((), {"entry_1__data_1__data": np.zeros((2, 2, 2, 2))}, "entry_1/data_1/data"),
        (("entry_1/truth/object",), {}, "entry_1/truth/object"),
    ],
)
def test_malformed_cxi_names_file_and_key(
    cxi_file: Path, delete: tuple[str, ...], replace: dict[str, np.ndarray], key: str
) -> None:
    edit(cxi_file, delete, **replace)
    with pytest.raises(DataFormatError) as error:
        cxi.load(cxi_file)
    assert "scan.cxi" in str(error.value) and key in str(error.value)
    assert error.value.key == key


def test_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file"):
        cxi.load(tmp_path / "absent.cxi")
    text = tmp_path / "notes.cxi"
    text.write_text("not hdf5")
    with pytest.raises(DataFormatError, match="notes.cxi.*not an HDF5 file"):
        cxi.load(text)
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["something"] = 1
    with pytest.raises(DataFormatError, match="entry_1/data_1/data"):
        cxi.load(tmp_path / "other.h5")


def _patterns(n: int = 6, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.ones((n, *shape))


@pytest.mark.parametrize(
    ("delete", "replace", "key"),
    [
        ((cxi.TRANSLATION,), {}, cxi.TRANSLATION),
        ((), {"entry_1__sample_1__geometry_1__translation": np.zeros((5, 3))}, cxi.TRANSLATION),
        ((), {"entry_1__data_1__data": -_patterns()}, "entry_1/data_1/data"),
        ((), {"entry_1__data_1__data": _patterns() * np.nan}, "entry_1/data_1/data"),
        ((), {"entry_1__data_1__data": _patterns(shape=(8, 6))}, "entry_1/data_1/data"),
        ((), {"entry_1__data_1__data": _patterns(shape=(7, 7))}, "entry_1/data_1/data"),
    ],
)
def test_validate_catches_bad_content(
    cxi_file: Path, delete: tuple[str, ...], replace: dict[str, np.ndarray], key: str
) -> None:
    edit(cxi_file, delete, **replace)
    if "entry_1__data_1__data" in replace:
        edit(cxi_file, (DETECTOR + "mask",))  # the mask would not fit other frame shapes
    for lazy in (False, True):
        data = cxi.load(cxi_file, lazy=lazy)
        with pytest.raises(DataFormatError) as error:
            data.validate()
        assert "scan.cxi" in str(error.value) and key in str(error.value)
        if lazy:
            data.patterns.close()  # type: ignore[attr-defined]


def test_inspect_text(cxi_file: Path) -> None:
    text = cxi.inspect_text(cxi.load(cxi_file))
    for expected in ("scan.cxi", "6 frames of 8 x 8", "keV", "nm", "um", "masked", "truth"):
        assert expected in text
    recon_nm = WAVELENGTH_M * 2.5 / (8 * 75e-6) * 1e9
    assert f"{recon_nm:.4g}" in text
    assert "(2 of 64)" in text


def test_inspect_text_names_electrons_and_scales_lengths() -> None:
    """Electron data (``voltage_v`` in the metadata) are described by the accelerating voltage,
    not the photon energy of the same wavelength, and picometre scans keep their digits."""
    data = dataclasses.replace(
        make_data(), wavelength_m=electron_wavelength_m(300e3), metadata={"voltage_v": "300000"},
        positions_m=np.stack([np.arange(6) * 4e-11, np.zeros(6)], axis=1))
    text = cxi.inspect_text(data)
    assert "300 keV electrons (wavelength 1.969 pm)" in text
    assert "extent 200 pm x 0 pm (y, x), mean step 40 pm" in text
    assert "photons" in cxi.inspect_text(make_data())


def test_results_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    obj = (rng.standard_normal((1, 80, 80)) + 1j * rng.standard_normal((1, 80, 80))).astype(
        np.complex128
    )
    probe = np.ones((2, 8, 8), np.complex64)
    positions = rng.uniform(size=(5, 2))
    path = tmp_path / "reconstruction.h5"
    attrs = {"pixel_size_m": (1e-8, 1e-8), "origin_m": (0.0, -1e-7), "modality": "ptycho"}
    write_results(
        path,
        {"object": obj, "probe": probe, "positions_m": positions},
        {**attrs, "wavelength_m": 1.5e-10, "epochs": 3},
        groups={"history": {"loss": np.array([3.0, 2.0, 1.0])}},
    )
    with h5py.File(path, "r") as handle:
        assert handle["object"].dtype == np.complex64
        assert handle["object"].compression == "gzip"
    arrays, read_attrs = read_results(path)
    assert set(arrays) == {"object", "probe", "positions_m", "history/loss"}
    np.testing.assert_allclose(arrays["object"], obj, rtol=1e-6)
    np.testing.assert_array_equal(arrays["probe"], probe)
    np.testing.assert_array_equal(arrays["positions_m"], positions)
    np.testing.assert_array_equal(arrays["history/loss"], [3.0, 2.0, 1.0])
    assert read_attrs == {**attrs, "wavelength_m": 1.5e-10, "epochs": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.h5"]
    with pytest.raises(DataFormatError, match="no such file"):
        read_results(tmp_path / "absent.h5")


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "reconstruction.h5"
    write_results(path, {"object": np.zeros(3)}, {})
    with pytest.raises(TypeError):
        write_results(path, {"object": np.ones(3), "bad": object()}, {})
    np.testing.assert_array_equal(read_results(path)[0]["object"], np.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstruction.h5"]


def test_lazy_frames_read_in_any_order_and_prefetched(tmp_path, small_ptycho):
    """Runs of consecutive frames, repeats and any order read the same as numpy indexing; the
    prefetching iterator serves the same batches as direct calls, in order."""
    path = tmp_path / "scan.cxi"
    cxi.save(small_ptycho, path)
    patterns = np.asarray(small_ptycho.patterns, dtype=np.float32)
    index = np.array([7, 3, 4, 5, 60, 0, 5, 79, 8, 9])
    with h5py.File(path) as handle:
        frames = read_frames(handle["entry_1/data_1/data"], index)
    np.testing.assert_array_equal(frames, patterns[index])
    lazy = diffrecon.load(path, lazy=True)
    model = Ptycho.from_data(lazy, PtychoConfig())
    batches = PatternBatches(lazy, model.propagator, lazy=True)
    groups = [torch.as_tensor(g) for g in ([5, 1, 2], [70, 71, 72, 0], [9])]
    served = list(prefetched(batches, groups, background=True))
    assert [i.tolist() for i, _ in served] == [g.tolist() for g in groups]
    for (_, counts), group in zip(served, groups, strict=True):
        torch.testing.assert_close(counts, batches(group))


def test_pattern_batches_leave_the_users_array_alone(small_ptycho) -> None:
    """Non-finite counts on masked pixels are zeroed in the working copy only, also where
    the layout needs no change (near field) and the likelihood keeps raw counts (Poisson)."""
    import dataclasses

    from diffrecon.physics.propagators import AngularSpectrum

    patterns = np.array(small_ptycho.patterns, dtype=np.float32)
    patterns[:, 0, 0] = np.nan
    valid = np.ones(small_ptycho.frame_shape, dtype=bool)
    valid[0, 0] = False
    data = dataclasses.replace(small_ptycho, patterns=patterns, valid=valid)
    near = AngularSpectrum(data.frame_shape, (1e-7, 1e-7), data.wavelength_m, 1e-3)
    batches = PatternBatches(data, near, lazy=False)
    assert np.isnan(patterns[:, 0, 0]).all()  # the user's data: untouched
    served = batches(torch.arange(data.num_patterns))
    assert bool((served[:, 0, 0] == 0).all())
    np.testing.assert_array_equal(served[:, 1:].numpy(), patterns[:, 1:])


@pytest.mark.parametrize("likelihood", ["amplitude", "poisson", "gaussian"])
def test_whole_counts_are_held_as_uint16_and_served_unchanged(small_ptycho, monkeypatch,
                                                             likelihood) -> None:
    """Whole-number counts in range are held as uint16 (half the memory) and every batch
    equals the float32 copy's, masked pixels (NaN here) zeroed in both; anything else stays
    float32 (counts > 65535, fractions), also when it first shows in a later block (what
    was stored as uint16 until then is converted)."""
    import dataclasses

    from diffrecon.losses.likelihoods import make_likelihood

    prepare = make_likelihood(likelihood).prepare_
    model = Ptycho.from_data(small_ptycho, PtychoConfig())
    frame = small_ptycho.frame_shape
    monkeypatch.setattr(PatternBatches, "block_bytes", 7 * 4 * frame[0] * frame[1])
    counts = np.round(np.asarray(small_ptycho.patterns, dtype=np.float32))
    valid = np.ones(frame, dtype=bool)
    valid[0, :3] = False
    counts[:, 0, :3] = np.nan
    index = torch.tensor([0, 79, 5, 6, 40, 41, 40])
    cases = {"whole": counts.copy(), "late fraction": counts.copy(), "large": counts.copy()}
    cases["late fraction"][50, 3, 3] += 0.5  # block 8 of 12
    cases["large"][10, 5, 5] = 70000.0
    for name, patterns in cases.items():
        data = dataclasses.replace(small_ptycho, patterns=patterns, valid=valid)
        compact = PatternBatches(data, model.propagator, prepare=prepare)
        full = PatternBatches(data, model.propagator, prepare=prepare, compact=False)
        assert compact.compact == (name == "whole") and not full.compact
        expected = full(index)
        masked = expected[:, ~full.valid]  # native (DC-first) layout
        assert expected.dtype == torch.float32 and masked.numel() == 21
        assert bool((masked == 0).all())
        assert torch.equal(compact(index), expected), name
        assert torch.equal(compact(torch.arange(80)), full(torch.arange(80))), name
    held = PatternBatches(dataclasses.replace(small_ptycho, patterns=counts, valid=valid),
                          model.propagator, prepare=prepare)
    assert held.patterns.dtype == torch.uint16 and held.patterns.element_size() == 2


def test_ground_truth_is_read_only_where_metrics_use_it(tmp_path, small_ptycho,
                                                        monkeypatch) -> None:
    path = tmp_path / "scan.cxi"
    cxi.save(small_ptycho, path)
    assert diffrecon.load(path).truth is not None
    assert diffrecon.load(path, truth=False).truth is None

    def unread(*args: object) -> None:
        raise AssertionError("ground truth read without metrics")

    monkeypatch.setattr(cxi, "_read_truth", unread)
    result = diffrecon.reconstruct(path, "ptycho", overrides=[
        "recon.epochs=1", "log.metrics=false", "log.progress=false"])
    assert result.metrics == {}
    with pytest.raises(AssertionError, match="without metrics"):
        diffrecon.reconstruct(path, "ptycho", overrides=["recon.epochs=1", "log.progress=false"])


def test_summed_counts_read_the_data_once(tmp_path, small_ptycho, monkeypatch) -> None:
    path = tmp_path / "scan.cxi"
    cxi.save(small_ptycho, path)
    expected = np.asarray(small_ptycho.patterns, dtype=np.float64).sum(axis=0)
    for data in (diffrecon.load(path, lazy=True), diffrecon.load(path)):
        np.testing.assert_allclose(data.summed_counts(), expected, rtol=1e-12)
        monkeypatch.setattr(type(data), "blocks", lambda *a, **k: pytest.fail("read twice"))
        np.testing.assert_allclose(data.summed_counts(), expected, rtol=1e-12)
        monkeypatch.undo()
