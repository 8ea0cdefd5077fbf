"""Storage: compressed raws and intermediates, and the retention of
intermediates (`lsst.cpcombined.repo.prune`, ``cpcombined prune``, the run's
cleanup step).

What is measured:

* the Rice codec is the FITS convention's, byte for byte (astropy's coder
  gives the same bytes; each decodes the other);
* quantised planes: every pixel within half a step of its value, the error
  unbiased with the rms of a uniform variable (step / sqrt(12)), NaN and
  exact zeros kept, and astropy reads the files (and we read astropy's)
  bit for bit;
* the effect of quantised intermediates on a combined product: the
  difference to the product of the unquantised frames is ~1/55 of the
  product's own noise;
* raws: lossless, read back identical to uncompressed files, ~3x smaller;
* pruning: only intermediates go, only once the run's products are
  certified, a chain's inputs are never touched, an interrupted removal is
  finished and leaves no file the registry does not know;
* the daily run: the repository grows by at most 1.3 x its compressed raws,
  the certified products are identical with and without the cleanup, and a
  run killed in the middle of the cleanup and resumed finishes it with no
  orphaned file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import astropy.io.fits as fits
import astropy.units as u
import numpy as np
import pytest
import yaml
from lsst.cpcombined.algorithms.combine import ArraySource, combine
from lsst.cpcombined.algorithms.quantize import dequantize_rows, quantize_rows
from lsst.cpcombined.algorithms.rice import decode_rows, encode_rows
from lsst.cpcombined.obs.raw import read_raw_file, write_raw_file
from lsst.cpcombined.repo.formatters import (
    PROC_QUANTIZE_LEVEL,
    read_proc_image,
    write_proc_image,
)
from lsst.cpcombined.repo.products import from_masked_image, to_masked_image
from lsst.cpcombined.repo.prune import (
    FileJournal,
    PruneError,
    prune_intermediates,
    resolve_runs,
)
from lsst.cpcombined.repo.tiled_fits import FitsIndex, compressed_image_hdu, primary_hdu, write_hdus
from lsst.cpcombined.simulation import SimulationTruth
from lsst.daf.butler import Butler, CollectionType, DatasetType, Timespan

ROOT = Path(__file__).resolve().parents[1]


# -- Rice coding ------------------------------------------------------------------------


def _astropy_rice():
    from astropy.io.fits.hdu.compressed._compression import compress_rice_1_c, decompress_rice_1_c

    return compress_rice_1_c, decompress_rice_1_c


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.int8])
def test_rice_is_the_fits_convention(dtype):
    compress, decompress = _astropy_rice()
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    bytepix = np.dtype(dtype).itemsize
    rows = [
        rng.integers(info.min, info.max, 700, endpoint=True),  # high entropy, wrap-around differences
        np.zeros(700),  # all-zero blocks
        rng.normal(0, 3, 700),
        np.concatenate([rng.normal(0, 20, 690), [info.max] * 5, [info.min] * 5]),  # outliers
        np.full(700, info.max),
    ]
    image = np.array(rows).astype(dtype)
    heap, counts, offsets = encode_rows(image, bytepix)
    decoded = np.empty_like(image)
    decode_rows(heap, counts, offsets, decoded, bytepix=bytepix)
    np.testing.assert_array_equal(decoded, image)
    for row, count, offset in zip(image, counts, offsets, strict=True):
        ours = heap[offset : offset + count].tobytes()
        assert ours == compress(row.tobytes(), 32, bytepix)  # byte-identical to CFITSIO's coder
        back = np.frombuffer(decompress(ours, 32, bytepix, row.size), dtype=f"i{bytepix}")
        np.testing.assert_array_equal(back, row)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        decode_rows(heap[: counts[0] // 2], counts[:1], offsets[:1], decoded[:1], bytepix=bytepix)


# -- quantisation -----------------------------------------------------------------------


def test_quantisation_error_is_uniform_unbiased_and_keeps_nan_and_zero():
    rng = np.random.default_rng(2)
    sigma = 7.0
    image = (1000.0 + rng.normal(0, sigma, (400, 1000))).astype(np.float32)
    image[5, 7] = np.nan
    image[6, :10] = 0.0
    step = sigma / 16
    q, scales, zeros, nblank = quantize_rows(image, step, seed=77)
    back = dequantize_rows(q, scales, zeros, 77)
    assert nblank == 1 and np.isnan(back[5, 7]) and np.all(back[6, :10] == 0.0)
    err = (back.astype(np.float64) - image)[np.isfinite(image) & (image != 0)]
    # within half a step (plus float32 rounding of ~1000: 6e-5)
    assert np.abs(err).max() <= step / 2 + 1e-4
    # rms of a uniform error: step / sqrt(12) = 0.1263; 4e5 pixels -> 0.1 % precision
    assert abs(err.std() / (step / np.sqrt(12)) - 1) < 0.01
    assert abs(err.mean()) < 3 * step / np.sqrt(12) / np.sqrt(err.size)  # unbiased (3 sigma)
    # independent of the value: no correlation with the signal
    signal = image[np.isfinite(image) & (image != 0)] - 1000.0
    assert abs(np.corrcoef(signal, err)[0, 1]) < 0.01


def test_quantised_files_are_read_by_astropy_and_we_read_astropy(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.normal(500.0, 20.0, (64, 300)).astype(np.float32)
    image[3, 3] = np.nan
    image[4, 4] = 0.0
    mask = (rng.random((64, 300)) < 0.01).astype(np.uint8) * 8
    path = tmp_path / "ours.fits"
    header = fits.Header({"BUNIT": "electron"})
    write_hdus(
        path,
        [
            primary_hdu(),
            compressed_image_hdu(image, header, name="IMAGE", quantize_step=20.0 / 16),
            compressed_image_hdu(mask, name="MASK"),
        ],
    )
    ours = FitsIndex.of(path)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["IMAGE"].data, ours.read_rows("IMAGE"))
        np.testing.assert_array_equal(hdul["MASK"].data, mask)
        assert hdul["IMAGE"].header["BUNIT"] == "electron"
    assert np.abs(ours.read_rows("IMAGE") - image)[np.isfinite(image)].max() <= 20.0 / 32 + 1e-4
    block = ours.read_rows("IMAGE", 10, 20, slice(5, 50))
    np.testing.assert_array_equal(block, ours.read_rows("IMAGE")[10:20, 5:50])
    # astropy's quantised tiles (both dither methods, tiles of several rows), read here bit for bit;
    # tiles narrower than a row are read through astropy
    theirs = tmp_path / "theirs.fits"
    integers = np.nan_to_num(image).astype(np.int32)
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(
                image, compression_type="RICE_1", quantize_level=4, quantize_method=2, name="D2"
            ),
            fits.CompImageHDU(
                image, compression_type="RICE_1", quantize_level=8, quantize_method=1, name="D1",
                tile_shape=(5, 300),
            ),
            fits.CompImageHDU(integers, compression_type="RICE_1", name="I", tile_shape=(3, 300)),
            fits.CompImageHDU(integers, compression_type="RICE_1", name="N", tile_shape=(3, 30)),
        ]
    ).writeto(theirs)
    index = FitsIndex.of(theirs)
    with fits.open(theirs) as hdul:
        for name in ("D2", "D1", "I", "N"):
            assert index.hdu(name).fast_path() == (name != "N")
            np.testing.assert_array_equal(index.read_rows(name, 7, 33), hdul[name].data[7:33])


def test_lossless_gzip_tiles(tmp_path):
    """GZIP_2 / GZIP_1 tiles (the products' lossless compression): ours
    round-trip bit for bit, astropy and our reader agree on ours and on
    astropy's (tiles of several rows too), a corrupt tile is a clear error."""
    rng = np.random.default_rng(7)
    image = rng.normal(0.0, 3.0, (37, 300)).astype(np.float32)
    image[3, 4] = np.nan
    mask = np.zeros(image.shape, np.int32)
    mask[:, 17] = 5
    small = np.nan_to_num(image * 4).astype(np.int16)
    ours = tmp_path / "ours.fits"
    write_hdus(
        ours,
        [
            primary_hdu(),
            compressed_image_hdu(image, name="F2", algorithm="GZIP_2"),
            compressed_image_hdu(image, name="F1", algorithm="GZIP_1"),
            compressed_image_hdu(mask, name="M", algorithm="GZIP_2"),
            compressed_image_hdu(small, name="S", algorithm="GZIP_2"),
        ],
    )
    index = FitsIndex.of(ours)
    with fits.open(ours) as hdul:
        for name, array in (("F2", image), ("F1", image), ("M", mask), ("S", small)):
            assert index.hdu(name).fast_path()
            np.testing.assert_array_equal(index.read_rows(name), array)
            np.testing.assert_array_equal(hdul[name].data, array)
            np.testing.assert_array_equal(index.read_rows(name, 5, 9), array[5:9])
    assert os.path.getsize(ours) < 3 * image.nbytes
    with pytest.raises(ValueError, match="losslessly"):
        compressed_image_hdu(image, algorithm="GZIP_2", quantize_step=1.0)
    theirs = tmp_path / "theirs.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(
                image, compression_type="GZIP_2", quantize_level=0.0, tile_shape=(4, 300), name="A"
            ),
            fits.CompImageHDU(mask, compression_type="GZIP_1", tile_shape=(1, 300), name="B"),
        ]
    ).writeto(theirs)
    index = FitsIndex.of(theirs)
    for name, array in (("A", image), ("B", mask)):
        assert index.hdu(name).fast_path()
        np.testing.assert_array_equal(index.read_rows(name, 2, 31), array[2:31])
    broken = tmp_path / "broken.fits"
    data = bytearray(ours.read_bytes())
    tiles = FitsIndex.of(ours)._tiles(FitsIndex.of(ours).hdu("F2"))
    start = tiles.heap_start + int(tiles.offsets[2])
    data[start + 12 : start + 40] = b"\xff" * 28
    broken.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="broken.fits"):
        FitsIndex.of(broken).read_rows("F2")


def test_proc_files_are_compact_and_read_in_row_blocks(tmp_path):
    rng = np.random.default_rng(4)
    ny, nx = 200, 512
    variance = np.full((ny, nx), 60.0, np.float32)
    image = rng.normal(0.0, np.sqrt(60.0), (ny, nx)).astype(np.float32)
    mask = np.zeros((ny, nx), np.uint8)
    mask[:, 100] = 1
    mi = to_masked_image(image, variance, mask, unit=u.electron, metadata={"EXPOSURE": 1})
    exact, compact = tmp_path / "exact.fits", tmp_path / "compact.fits"
    write_proc_image(mi, exact)
    write_proc_image(mi, compact, quantize_level=PROC_QUANTIZE_LEVEL)
    # 8 bytes per pixel exact (the mask is always compressed); quantised at
    # sigma/16: ~7 bits per float plane
    assert os.path.getsize(exact) > 8 * ny * nx
    assert os.path.getsize(compact) < 2.2 * ny * nx
    full = read_proc_image(compact)
    im, var, msk = from_masked_image(full)
    np.testing.assert_array_equal(msk, mask)
    step = np.sqrt(60.0) / PROC_QUANTIZE_LEVEL
    assert np.abs(im - image).max() <= step / 2 + 1e-5
    assert np.abs(var - variance).max() <= step / 2 + 1e-5
    assert full.image.unit == u.electron and full.metadata["EXPOSURE"] == 1
    from lsst.images import Box

    block = read_proc_image(compact, Box.factory[50:90, 0:nx])
    np.testing.assert_array_equal(block.image.array, im[50:90])
    np.testing.assert_array_equal(from_mask_array(block), mask[50:90])


def from_mask_array(mi):
    return from_masked_image(mi)[2]


def test_quantised_intermediates_change_a_combination_far_below_its_noise(tmp_path):
    """20 frames of white noise (sigma 7 e-) combined from exact and from
    quantised planes.  A plain mean differs by sigma / (16 sqrt(12)) /
    sqrt(20) = 0.028 e- rms (1/55 of the product's noise, 1.57 e-); the
    3-sigma clipped mean the combine uses adds a few clipping decisions that
    flip (values within a quantisation step of a bound): 0.044 e- rms, 1/36
    of the noise.  Either way the product's noise is unchanged to 0.1 %."""
    rng = np.random.default_rng(5)
    n, ny, nx, sigma = 20, 300, 400, 7.0
    frames = [rng.normal(100.0, sigma, (ny, nx)).astype(np.float32) for _ in range(n)]
    variance = np.full((ny, nx), sigma**2, np.float32)
    mask = np.zeros((ny, nx), np.uint8)
    stored = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"f{i}.fits"
        mi = to_masked_image(frame, variance, mask, unit=None)
        write_proc_image(mi, path, quantize_level=PROC_QUANTIZE_LEVEL)
        stored.append(from_masked_image(read_proc_image(path))[0])
    product_noise = sigma / np.sqrt(n)
    expected = sigma / PROC_QUANTIZE_LEVEL / np.sqrt(12) / np.sqrt(n)  # 0.0282 e-
    mean_diff = np.mean(stored, axis=0, dtype=np.float64) - np.mean(frames, axis=0, dtype=np.float64)
    assert abs(mean_diff.mean()) < 5 * expected / np.sqrt(mean_diff.size)  # unbiased
    assert abs(mean_diff.std() / expected - 1) < 0.02  # 1.2e5 pixels: 0.2 % precision
    exact = combine([ArraySource(f, mask) for f in frames], nsigma=3.0, niter=3).image
    quantised = combine([ArraySource(f, mask) for f in stored], nsigma=3.0, niter=3).image
    diff = quantised.astype(np.float64) - exact
    assert abs(diff.mean()) < 5 * diff.std() / np.sqrt(diff.size)
    assert diff.std() / product_noise < 1 / 30  # far below the product's noise
    assert abs(quantised.std() / exact.std() - 1) < 1e-3


# -- raws -------------------------------------------------------------------------------------


def test_raws_are_compressed_by_default_losslessly(tmp_path):
    truth = SimulationTruth("LATISS", {"geometry_scale": 0.125})
    assert truth.compress is True
    from lsst.cpcombined.simulation.sensor import simulate_raw_amps

    amps = simulate_raw_amps(truth, 0, "flat", 10.0, 10.0, 0, truth.exposure_rng(1, 0))
    header = {"FILENAME": "x.fits", "OBSID": "x"}
    write_raw_file(tmp_path / "c.fits", header, amps, truth.layout)
    write_raw_file(tmp_path / "p.fits", header, amps, truth.layout, compress=False)
    compressed, plain = read_raw_file(tmp_path / "c.fits"), read_raw_file(tmp_path / "p.fits")
    np.testing.assert_array_equal(compressed.image.array, plain.image.array)
    assert compressed.amp_metadata == plain.amp_metadata and compressed.metadata == plain.metadata
    assert os.path.getsize(tmp_path / "c.fits") < 0.45 * os.path.getsize(tmp_path / "p.fits")
    with fits.open(tmp_path / "c.fits", disable_image_compression=True) as hdul:
        assert [h.header.get("ZCMPTYPE") for h in hdul[1:]] == ["RICE_1"] * 16
    with fits.open(tmp_path / "c.fits") as hdul:  # a standard tile-compressed file
        assert hdul[1].header["EXTNAME"] == "Segment10"
        np.testing.assert_array_equal(hdul[1].data, np.asarray(amps["C10"]))


# -- pruning ----------------------------------------------------------------------------------


def datastore_files(root: Path) -> tuple[set[str], set[str]]:
    """(files on disk that no dataset of the registry references, files the
    registry references that are missing).  The registry database, the
    butler configuration and the package's run records are not datastore
    files."""
    butler = Butler.from_config(str(root))
    runs = list(butler.collections.query("*", collection_types={CollectionType.RUN}))
    known = set()
    for ref in butler.registry.queryDatasets(..., collections=runs):
        known.add(os.path.realpath(butler.getURI(ref).ospath))
    on_disk = set()
    for directory, _, names in os.walk(root):
        rel = Path(directory).relative_to(root)
        if rel.parts[:1] == ("cpcombined",):
            continue
        for name in names:
            if rel == Path(".") and (name == "butler.yaml" or name.startswith("gen3.sqlite3")):
                continue
            on_disk.add(os.path.realpath(os.path.join(directory, name)))
    return on_disk - known, {p for p in known if not os.path.exists(p)}


def _fake_generation_run(butler: Butler, run: str, detector: int = 0):
    """A RUN collection holding one cpcBiasProc and the bias made from it."""
    rng = np.random.default_rng(detector)
    image = rng.normal(0, 5, (30, 40)).astype(np.float32)
    variance, mask = np.full(image.shape, 25.0, np.float32), np.zeros(image.shape, np.uint8)
    mi = to_masked_image(image, variance, mask, unit=u.electron)
    butler.collections.register(run)
    proc = butler.put(mi, "cpcBiasProc", instrument="LSSTComCam", detector=detector, run=run)
    bias = butler.put(mi, "bias", instrument="LSSTComCam", detector=detector, run=run)
    return proc, bias


def _register(butler: Butler) -> None:
    dims = butler.dimensions.conform(["instrument", "detector"])
    butler.registry.registerDatasetType(DatasetType("cpcBiasProc", dims, "MaskedImageV2"))
    butler.registry.registerDatasetType(DatasetType("bias", dims, "ExposureF", isCalibration=True))


def _certify(butler: Butler, ref) -> None:
    butler.collections.register("LSSTComCam/calib/test", CollectionType.CALIBRATION)
    butler.registry.certify("LSSTComCam/calib/test", [ref], Timespan(None, None))


def test_prune_only_certified_runs_own_intermediates(repo, tmp_path):
    butler = repo
    root = tmp_path / "repo"
    _register(butler)
    proc, bias = _fake_generation_run(butler, "u/test/cpBias/run1")
    other_proc, other_bias = _fake_generation_run(butler, "u/other/cpBias/run0", detector=1)
    _certify(butler, other_bias)
    # a pipetask output chain: its own run, then its inputs
    butler.collections.register("u/test/cpBias", CollectionType.CHAINED)
    butler.collections.redefine_chain("u/test/cpBias", ["u/test/cpBias/run1", "u/other/cpBias/run0"])
    runs = resolve_runs(butler, collections=["u/test/cpBias"])
    assert runs == ["u/test/cpBias/run1"]  # never the chain's inputs
    with pytest.raises(PruneError, match="not a RUN"):
        resolve_runs(butler, runs=["u/test/cpBias"])
    with pytest.raises(PruneError, match="does not exist"):
        resolve_runs(butler, collections=["nope"])
    proc_path = butler.getURI(proc).ospath
    size = os.path.getsize(proc_path)
    # the bias made from it is not certified: refused, nothing removed
    report = prune_intermediates(butler, runs)
    assert report.refused and "not certified: bias (detector=0)" in report.refused[0].refused
    assert os.path.exists(proc_path) and report.files == 0
    _certify(butler, bias)
    dry = prune_intermediates(butler, runs, dry_run=True)
    assert dry.files == 1 and dry.nbytes == size and os.path.exists(proc_path)
    journal = FileJournal(root / "cpcombined" / "prune.json")
    report = prune_intermediates(butler, runs, journal=journal)
    assert report.files == 1 and report.nbytes == size and report.runs[0].removed == {"cpcBiasProc": 1}
    assert f"total: removed 1 files, {size} bytes" in report.lines()[-1]
    assert not os.path.exists(proc_path)
    assert butler.get_dataset(proc.id) is None and butler.get_dataset(bias.id) is not None
    assert butler.get_dataset(other_proc.id) is not None  # an input of the chain: untouched
    assert datastore_files(root) == (set(), set())


def test_interrupted_prune_is_finished_without_orphans(repo, tmp_path, monkeypatch):
    """A removal killed after the registry forgot the datasets but before
    their files were deleted leaves orphans; the next prune (any runs, the
    same journal) deletes them."""
    from lsst.daf.butler.datastores.fileDatastore import FileDatastore

    butler = repo
    root = tmp_path / "repo"
    _register(butler)
    refs = [_fake_generation_run(butler, f"u/test/run{i}", detector=i) for i in range(2)]
    for _, bias in refs:
        _certify(butler, bias)

    class Killed(BaseException):
        pass

    def killed(self, *args, **kwargs):
        raise Killed

    monkeypatch.setattr(FileDatastore, "emptyTrash", killed)
    journal = FileJournal(root / "cpcombined" / "prune.json")
    with pytest.raises(Killed):
        prune_intermediates(butler, ["u/test/run0", "u/test/run1"], journal=journal)
    orphans, missing = datastore_files(root)
    assert len(orphans) == 1 and not missing  # run0's file: the registry no longer knows it
    assert journal.entries()["u/test/run0"]["status"] == "removing"
    monkeypatch.undo()
    report = prune_intermediates(butler, ["u/test/run1"], journal=journal)
    assert report.recovered_files == 1 and report.files == 1
    assert datastore_files(root) == (set(), set())
    assert {e["status"] for e in journal.entries().values()} == {"done"}


def test_prune_command(repo, tmp_path, capsys):
    from lsst.cpcombined.cli.main import main

    butler = repo
    _register(butler)
    proc, bias = _fake_generation_run(butler, "u/test/cpBias/run1")
    root = str(tmp_path / "repo")
    assert main(["prune", root, "--collection", "u/test/cpBias/run1"]) == 1  # refused: not certified
    out = capsys.readouterr().out
    assert "refused: not certified: bias (detector=0)" in out and "total: removed 0 files" in out
    assert main(["prune", root, "--run", "u/test/cpBias/run1", "--force"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 cpcBiasProc" in out
    assert main(["prune", root]) == 1
    assert "name what to prune" in capsys.readouterr().err


# -- the daily run ------------------------------------------------------------------------


def _repository_bytes(root: Path) -> int:
    """Bytes of a butler repository's files: the datastore's and the
    registry database, not the package's run records (``REPO/cpcombined``:
    run states, summaries, HTML reports)."""
    total = 0
    for directory, _, names in os.walk(root):
        if Path(directory).relative_to(root).parts[:1] == ("cpcombined",):
            continue
        total += sum(os.path.getsize(os.path.join(directory, n)) for n in names)
    return total


def _product_hashes(root: Path, collection: str) -> dict[str, str]:
    """sha256 of the pixels (and table rows) of every certified product."""
    from lsst.cpcombined.repo.exposure_fits import read_exposure_fits

    butler = Butler.from_config(str(root))
    out = {}
    for name in ("bias", "dark", "flat", "defects", "ptc"):
        for ref in butler.query_datasets(name, collections=collection, find_first=False, explain=False):
            path = butler.getURI(ref).ospath
            digest = hashlib.sha256()
            if name in ("bias", "dark", "flat"):
                mi = read_exposure_fits(path)
                for array in from_masked_image(mi):
                    digest.update(np.ascontiguousarray(array).tobytes())
            else:
                with fits.open(path) as hdul:
                    digest.update(hdul[1].data.tobytes())
            out[f"{name} {ref.dataId.required}"] = digest.hexdigest()
    return out


#: Runs ``cpcombined`` and SIGKILLs itself in the second file deletion of
#: the cleanup: after the cpBias run's intermediates are gone and while the
#: cpDark run's are half removed (registry entries gone, files still there).
_KILL_IN_CLEANUP = """
import os, signal, sys
import lsst.cpcombined.repo.prune as prune
from lsst.daf.butler.datastores.fileDatastore import FileDatastore

empty_trash, prune_intermediates = FileDatastore.emptyTrash, prune.prune_intermediates
state = {"pruning": False, "calls": 0}

def kill_second(self, *args, **kwargs):
    if state["pruning"]:
        state["calls"] += 1
        if state["calls"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return empty_trash(self, *args, **kwargs)

def pruning(*args, **kwargs):
    state["pruning"] = True
    return prune_intermediates(*args, **kwargs)

FileDatastore.emptyTrash = kill_second
prune.prune_intermediates = pruning
from lsst.cpcombined.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_daily_run_is_compact_and_a_kill_in_its_cleanup_resumes(tmp_path):
    """The example daily run (20 biases, 22 darks, 20 flats; PTC, defects)
    at 1/8 size: killed while removing its intermediates, resumed; the
    repository (datastore and registry) then grows by at most 1.3 x the
    bytes of its (compressed) raws, holds no intermediate and no file the registry does not know, and
    the certified products are bit-identical to what they were before the
    cleanup (i.e. with the intermediates kept)."""
    from lsst.cpcombined.repo.create import create_repo
    from lsst.cpcombined.script.runner import run_procedure

    config = yaml.safe_load((ROOT / "config" / "examples" / "latiss_daily.yaml").read_text())
    config["simulation"]["geometry_scale"] = 0.125
    path = tmp_path / "daily.yaml"
    path.write_text(yaml.safe_dump(config))
    repo = tmp_path / "repo"
    create_repo(repo)
    empty = _repository_bytes(repo)
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_IN_CLEANUP, "run", str(path), "--repo", str(repo)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=900,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state_path = next((repo / "cpcombined" / "runs" / "LATISS").glob("*.json"))
    state = json.loads(state_path.read_text())
    assert state["status"] == "running" and state["cleanup"]["status"] == "started"
    orphans, missing = datastore_files(repo)
    assert orphans and not missing  # killed between the registry's removal and the files'
    before = _product_hashes(repo, "LATISS/calib/daily")
    assert len(before) == 5

    code, summary = run_procedure(path, repo=repo)
    assert code == 0, summary.error
    state = json.loads(state_path.read_text())
    assert state["status"] == "succeeded" and state["cleanup"]["status"] == "done"
    assert datastore_files(repo) == (set(), set())  # no orphan, nothing dangling
    assert _product_hashes(repo, "LATISS/calib/daily") == before
    butler = Butler.from_config(str(repo))
    runs = list(butler.collections.query("*", collection_types={CollectionType.RUN}))
    for name in ("cpcBiasProc", "cpcDarkProc", "cpcFlatProc", "cpcFlatStatistics"):
        assert not butler.query_datasets(name, collections=runs, find_first=False, explain=False), name
    raws = sum(
        os.path.getsize(butler.getURI(ref).ospath)
        for ref in butler.query_datasets("raw", collections="LATISS/raw/all", explain=False)
    )
    products = sum(
        os.path.getsize(butler.getURI(ref).ospath)
        for name in ("bias", "dark", "flat", "defects", "ptc")
        for ref in butler.query_datasets(name, collections=runs, find_first=False, explain=False)
    )
    growth = _repository_bytes(repo) - empty
    print(
        f"\nraws {raws / 1e6:.2f} MB; repository growth {growth / 1e6:.2f} MB = {growth / raws:.3f} x raws "
        f"(products {products / 1e6:.2f} MB, everything else {(growth - raws - products) / 1e6:.2f} MB)"
    )
    assert growth <= 1.3 * raws


def test_run_cleanup_step_and_keep_intermediates(repo, tmp_path):
    """The runner's cleanup step removes the intermediates of the run's
    generation collections and records it in the run state; with
    ``execution.keep_intermediates: true`` it keeps them."""
    from lsst.cpcombined.script.core import CalibrationOutcome, RunSummary
    from lsst.cpcombined.script.runner import RunConfig, _remove_intermediates, load_run_config
    from lsst.cpcombined.script.schema import ConfigError
    from lsst.cpcombined.script.state import RunState

    butler = repo
    root = tmp_path / "repo"
    _register(butler)
    proc, bias = _fake_generation_run(butler, "u/test/cpBias/run1")
    _certify(butler, bias)
    butler.collections.register("u/test/cpBias", CollectionType.CHAINED)
    butler.collections.redefine_chain("u/test/cpBias", ["u/test/cpBias/run1"])
    outcome = CalibrationOutcome("bias", generated_collection="u/test/cpBias")
    summary = RunSummary("LSSTComCam", calibrations={"bias": outcome})
    state = RunState(tmp_path / "state.json", {"run_id": "r", "config_key": "k", "status": "running"})
    keep = RunConfig("LSSTComCam", {}, {}, {"keep_intermediates": True})
    assert _remove_intermediates(keep, summary, state, root) == 0
    assert butler.get_dataset(proc.id) is not None and state.get("cleanup") is None
    default = RunConfig("LSSTComCam", {}, {}, {})
    assert _remove_intermediates(default, summary, state, root) == 0
    assert Butler.from_config(str(root)).get_dataset(proc.id) is None
    assert state.get("cleanup")["status"] == "done" and state.get("cleanup")["files"] == 1
    assert summary.steps[-1].name == "remove intermediates" and summary.steps[-1].status == "ok"
    # Recorded in the state too, with its start, as the procedure's steps (a resumed run keeps it).
    recorded = state.get("steps")[-1]
    assert recorded["name"] == "remove intermediates" and recorded["started"] and recorded["status"] == "ok"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"execution": {"keep_intermediates": "yes"}}))
    with pytest.raises(ConfigError, match="keep_intermediates must be true or false"):
        load_run_config(bad)
