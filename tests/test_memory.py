"""Memory held between quanta of one process (in-process pipetask, clustered
BPS jobs): reading a product must not leave its pixels in reference cycles
after the quantum."""

from __future__ import annotations

import gc
import weakref

import astropy.units as u
import numpy as np
from lsst.cpcombined.repo.products import read_calibration, to_masked_image
from lsst.cpcombined.tasks._memory import collect_garbage_after
from lsst.daf.butler import DatasetType


def _read_keeping_a_weakref(butler, refs: list) -> None:
    """Read stored products the way the tasks do (a calibration through its
    file, an ISR intermediate through the butler); remember them weakly."""
    ref = butler.find_dataset("bias", collections="test/memory", instrument="LATISS", detector=0)
    image = read_calibration(butler.getDeferred(ref), "bias")
    refs.append(weakref.ref(image))
    assert image.image.array.shape == (64, 48)
    proc = butler.get("cpcIsrProc", collections="test/memory", instrument="LATISS", detector=0)
    refs.append(weakref.ref(proc))
    assert proc.image.array.shape == (64, 48)


def test_reading_a_product_leaves_cycles_that_the_decorator_collects(repo):
    butler = repo
    butler.registry.registerRun("test/memory")
    butler.registry.registerDatasetType(
        DatasetType("bias", ("instrument", "detector"), "ExposureF", isCalibration=True,
                    universe=butler.dimensions)
    )
    # An ISR intermediate (cpc*Proc, ProcImageFormatter); its dimensions do not matter here.
    butler.registry.registerDatasetType(
        DatasetType("cpcIsrProc", ("instrument", "detector"), "MaskedImageV2", universe=butler.dimensions)
    )
    rng = np.random.default_rng(3)
    product = to_masked_image(
        rng.normal(size=(64, 48)).astype(np.float32),
        np.ones((64, 48), np.float32),
        np.zeros((64, 48), np.int32),
        unit=u.electron,
    )
    butler.put(product, "bias", run="test/memory", instrument="LATISS", detector=0)
    butler.put(product, "cpcIsrProc", run="test/memory", instrument="LATISS", detector=0)
    del product

    gc.collect()
    gc.disable()  # only explicit collections below
    try:
        # Undecorated: the read's pixels outlive the call (the unit parser's
        # caught exceptions keep the calling frames in cycles).
        refs: list = []
        _read_keeping_a_weakref(butler, refs)
        leaked = [r() is not None for r in refs]
        gc.collect()
        assert all(r() is None for r in refs)
        # Decorated like every pixel task's runQuantum: gone on return.
        refs = []
        collect_garbage_after(_read_keeping_a_weakref)(butler, refs)
        assert all(r() is None for r in refs)
    finally:
        gc.enable()
    # Documents the cause; if a newer astropy/lsst.images stops leaving
    # cycles, the decorator is merely cheap insurance.
    print("pixels left in cycles without the decorator (calibration, intermediate):", leaked)


def test_every_pixel_task_collects_after_its_quantum():
    from lsst.cpcombined.tasks import (
        combine,
        flat_measure,
        isr,
        measure_defects,
        ptc_extract,
        verify_detector,
    )

    tasks = [
        combine.CpCombineTask,
        flat_measure.CpFlatMeasureTask,
        isr.CpIsrTask,
        measure_defects.CpMeasureDefectsTask,
        ptc_extract.CpPtcExtractTask,
        verify_detector.CpVerifyDetectorTask,
    ]
    for task in tasks:
        assert getattr(task.runQuantum, "__wrapped__", None) is not None, task.__name__
