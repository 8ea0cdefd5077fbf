"""Configuration schema of the make-calibrations script.

`get_schema` returns the JSON schema (written in YAML, as ScriptQueue
scripts do) with defaults and the per-instrument fields; `validate_config`
applies defaults, validates, and checks what a schema cannot express
(inconsistent combinations), raising `ConfigError` with every problem found.
"""

from __future__ import annotations

__all__ = ("ConfigError", "ScriptConfig", "get_schema", "validate_config")

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml

from ..obs.instrument import get_instrument
from ..repo.validity import validity_range

_SCHEMA_TEMPLATE = """
$schema: http://json-schema.org/draft-07/schema#
$id: https://github.com/lsst/cp_combined/blob/main/python/lsst/cpcombined/script/schema.py
title: MakeCalibrations ({instrument}) v1
description: >-
  Acquire biases, darks and flats with {instrument}; generate combined
  calibrations, verify them (DMTN-101), decide by majority rule and certify
  the good ones into a calibration collection.
type: object
required: [script_mode]
additionalProperties: false
properties:
  script_mode:
    description: Calibration sequence. Defects and PTC need BIAS_DARK_FLAT.
    type: string
    enum: [BIAS, DARK, BIAS_DARK, BIAS_DARK_FLAT]
  n_bias:
    description: Number of biases to take (after the discarded ones).
    type: integer
    minimum: 1
    default: 20
  n_discard_bias:
    description: Biases taken first and thrown away.
    type: integer
    minimum: 0
    default: 1
  n_dark:
    description: Number of darks to take (after the discarded ones).
    type: integer
    minimum: 1
    default: 22
  n_discard_dark:
    description: Darks taken first and thrown away.
    type: integer
    minimum: 0
    default: 1
  exp_times_dark:
    description: >-
      Dark exposure time (s): one number for all, or a list of
      n_dark + n_discard_dark values (discarded frames first).
    anyOf:
      - type: number
        exclusiveMinimum: 0
      - type: array
        minItems: 1
        items: {{type: number, exclusiveMinimum: 0}}
    default: 30
  n_flat:
    description: Number of flats to take (after the discarded ones).
    type: integer
    minimum: 1
    default: 20
  n_discard_flat:
    description: Flats taken first and thrown away.
    type: integer
    minimum: 0
    default: 1
  exp_times_flat:
    description: >-
      Flat exposure time (s): one number for all, or a list of
      n_flat + n_discard_flat values. For a PTC, give pairs of equal times.
    anyOf:
      - type: number
        exclusiveMinimum: 0
      - type: array
        minItems: 1
        items: {{type: number, exclusiveMinimum: 0}}
    default: 5
  wait_between_exposures:
    description: Seconds to wait between exposures.
    type: number
    minimum: 0
    default: 0
  generate_calibrations:
    description: >-
      Generate combined calibrations from the images taken (then verify
      them internally). If false, verify the images against the
      calibrations in the input_collections_verify_* collections
      (external verification).
    type: boolean
    default: false
  do_verify:
    description: Verify the calibrations (DMTN-101 tests) and decide by majority rule.
    type: boolean
    default: true
  calibration_pipelines:
    description: >-
      Which pipelines generate and verify the calibrations (cp_combined's
      extension of the ScriptQueue schema). cp_combined (the default): this
      package's pipelines, $CPCOMBINED_DIR/pipelines/{instrument}/cp<Type>.yaml
      and verify<Type>.yaml (the majority decision included).
      science_pipelines: cp_pipe's generation pipelines,
      $CP_PIPE_DIR/pipelines/{instrument}/cp<Type>.yaml (the gain from flat
      pairs: cpPtc.yaml#cpPtcGainFromFlatPairs), and cp_verify's verification
      pipelines, $CP_VERIFY_DIR/pipelines/{instrument}/verify<Type>.yaml,
      then this package's majority decision on cp_verify's outputs,
      $CPCOMBINED_DIR/pipelines/{instrument}/decide<Type>.yaml, and its
      certification. Needs cp_pipe and cp_verify set up where the pipelines
      run (CP_PIPE_DIR and CP_VERIFY_DIR set).
    type: string
    enum: [cp_combined, science_pipelines]
    default: cp_combined
  number_verification_tests_threshold_bias:
    description: >-
      T for biases: an exposure fails when one test fails at least
      T x (floor(D/2)+1) times over its D detectors' amplifiers.
    type: integer
    minimum: 1
    default: 8
  number_verification_tests_threshold_dark:
    description: T for darks (see number_verification_tests_threshold_bias).
    type: integer
    minimum: 1
    default: 8
  number_verification_tests_threshold_flat:
    description: T for flats (see number_verification_tests_threshold_bias).
    type: integer
    minimum: 1
    default: 8
  config_options_bias:
    description: Extra pipetask options for the bias pipeline (e.g. "-c cpBiasCombine:nSigma=4").
    type: string
    default: ""
  config_options_dark:
    description: Extra pipetask options for the dark pipeline.
    type: string
    default: ""
  config_options_flat:
    description: Extra pipetask options for the flat pipeline.
    type: string
    default: ""
  config_options_defects:
    description: Extra pipetask options for the defects pipeline.
    type: string
    default: ""
  config_options_ptc:
    description: Extra pipetask options for the PTC pipeline.
    type: string
    default: ""
  do_defects:
    description: Build defects from the combined dark and flat (needs BIAS_DARK_FLAT).
    type: boolean
    default: false
  do_ptc:
    description: Build a photon transfer curve from the flat pairs (needs BIAS_DARK_FLAT).
    type: boolean
    default: false
  do_gain_from_flat_pairs:
    description: Report the gain from the flat pairs (quick estimate) when flats are taken.
    type: boolean
    default: true
  n_processes:
    description: Processes per pipeline job (pipetask -j).
    type: integer
    minimum: 1
    default: 8
  certify_calib_begin_date:
    description: >-
      Start of the validity range of certified calibrations: a TAI date,
      YYYY-MM-DD or YYYY-MM-DDThh:mm:ss, without a time zone. A start before
      1970 is stored as unbounded.
    type: string
    default: "1950-01-01"
  certify_calib_end_date:
    description: End (TAI, YYYY-MM-DD[Thh:mm:ss], exclusive, after 1970) of the validity range.
    type: string
    default: "2050-01-01"
  oods_timeout:
    description: Seconds to wait for acquired images to appear in the repository.
    type: number
    exclusiveMinimum: 0
    default: 120
  background_task_timeout:
    description: >-
      Seconds allowed per exposure (and per detector batch of n_processes)
      for each pipeline job; a job running longer fails the script.
    type: number
    exclusiveMinimum: 0
    default: 30
  note:
    description: Note recorded with every exposure.
    type: string
    default: ""
  program:
    description: Program name recorded with every exposure.
    type: string
    default: "CALIBRATIONS"
  reason:
    description: Reason recorded with every exposure.
    type: string
    default: "daily"
  detectors:
    description: Detector ids to read out and process ({instrument} has {detector_ids}).
    type: array
    minItems: 1
    uniqueItems: true
    items: {{type: integer, enum: {detector_ids}}}
    default: {detector_ids}
  filter:
    description: Physical filter for the flats.
    type: string
    enum: {filters}
    default: {default_filter}
  input_collections_bias:
    description: Extra input collections (comma-separated) for the bias pipeline.
    type: string
    default: "{calib}"
  input_collections_verify_bias:
    description: Input collections holding the reference bias for (external) verification.
    type: string
    default: "{calib}"
  input_collections_dark:
    description: Extra input collections for the dark pipeline (the new bias is added).
    type: string
    default: "{calib}"
  input_collections_verify_dark:
    description: Input collections for dark verification.
    type: string
    default: "{calib}"
  input_collections_flat:
    description: Extra input collections for the flat pipeline (the new bias and dark are added).
    type: string
    default: "{calib}"
  input_collections_verify_flat:
    description: Input collections for flat verification.
    type: string
    default: "{calib}"
  input_collections_defects:
    description: Extra input collections for the defects pipeline (the new dark and flat are added).
    type: string
    default: "{calib}"
  input_collections_ptc:
    description: Extra input collections for the PTC pipeline (the new bias and dark are added).
    type: string
    default: "{calib}"
  calib_collection:
    description: CALIBRATION collection the good calibrations are certified into.
    type: string
    default: "{calib_out}"
  certify_chain:
    description: >-
      CHAINED collection to prepend calib_collection to after certifying
      (e.g. {calib}, created when missing).  Empty (the default): no chain is
      changed; the shared {calib} chain changes what every user of the
      repository gets, so it is only modified when asked.
    type: string
    default: ""
  repo:
    description: Butler repository (path or URI).
    type: string
    default: "/repo/{instrument}"
"""


class ConfigError(ValueError):
    """Invalid script configuration (every problem is listed)."""


@dataclasses.dataclass(frozen=True)
class ScriptConfig:
    """A validated configuration (all defaults applied)."""

    instrument: str
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not attributes; ``values`` itself is
        # missing while an instance is being unpickled.
        values = self.__dict__.get("values")
        if values is None or name not in values:
            raise AttributeError(name)
        return values[name]

    @property
    def image_types(self) -> list[str]:
        """Image types acquired, in order."""
        return {
            "BIAS": ["bias"],
            "DARK": ["dark"],
            "BIAS_DARK": ["bias", "dark"],
            "BIAS_DARK_FLAT": ["bias", "dark", "flat"],
        }[self.values["script_mode"]]

    def count(self, image_type: str) -> int:
        """Number of kept exposures of an image type."""
        return int(self.values[f"n_{image_type}"])

    def discard(self, image_type: str) -> int:
        """Number of discarded exposures of an image type."""
        return int(self.values[f"n_discard_{image_type}"])

    def exposure_times(self, image_type: str) -> list[float]:
        """Exposure time of every frame (discarded ones first)."""
        total = self.count(image_type) + self.discard(image_type)
        if image_type == "bias":
            return [0.0] * total
        value = self.values[f"exp_times_{image_type}"]
        if isinstance(value, list):
            return [float(v) for v in value]
        return [float(value)] * total

    def threshold(self, image_type: str) -> int:
        """Majority-rule threshold T of an image type."""
        return int(self.values[f"number_verification_tests_threshold_{image_type}"])

    def collections(self, key: str) -> list[str]:
        """A comma-separated ``input_collections_*`` value as a list."""
        return [c.strip() for c in str(self.values[f"input_collections_{key}"]).split(",") if c.strip()]

    def as_dict(self) -> dict[str, Any]:
        """Plain copy of the values."""
        return copy.deepcopy(dict(self.values))


def get_schema(instrument: str = "LATISS") -> dict[str, Any]:
    """JSON schema (as a dict) of the script configuration for an instrument."""
    inst = get_instrument(instrument)
    text = _SCHEMA_TEMPLATE.format(
        instrument=inst.getName(),
        detector_ids=inst.camera_description.ids,
        filters="[" + ", ".join(f'"{f.physical_filter}"' for f in inst.filters) + "]",
        default_filter=f'"{inst.default_flat_filter}"',
        calib=inst.default_input_calib_collection,
        calib_out=inst.default_output_calib_collection,
    )
    return yaml.safe_load(text)


def _with_defaults(schema: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(config))
    for key, prop in schema["properties"].items():
        if key not in out and "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
    return out


def validate_config(config: Mapping[str, Any] | None, instrument: str = "LATISS") -> ScriptConfig:
    """Apply defaults and validate a configuration.

    Parameters
    ----------
    config
        Configuration mapping (unknown keys are errors).
    instrument
        ``LATISS`` or ``LSSTComCam``.

    Raises
    ------
    ConfigError
        Listing every problem: schema violations (unknown keys, wrong
        types, values out of range) and inconsistent values (``do_ptc`` or
        ``do_defects`` without ``BIAS_DARK_FLAT``, an exposure-time list of
        the wrong length, a validity range that ends before it starts...).
    """
    schema = get_schema(instrument)
    values = _with_defaults(schema, config or {})
    problems: list[str] = []
    validator = jsonschema.Draft7Validator(schema)
    for err in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "config"
        problems.append(f"{where}: {err.message}")
    if not problems:
        mode = values["script_mode"]
        for flag in ("do_defects", "do_ptc"):
            if values[flag] and mode != "BIAS_DARK_FLAT":
                problems.append(f"{flag} needs script_mode BIAS_DARK_FLAT (got {mode})")
        for image_type in ("dark", "flat"):
            times = values[f"exp_times_{image_type}"]
            expected = values[f"n_{image_type}"] + values[f"n_discard_{image_type}"]
            if isinstance(times, list) and len(times) != expected:
                problems.append(
                    f"exp_times_{image_type} has {len(times)} values but n_{image_type} + "
                    f"n_discard_{image_type} = {expected}"
                )
        if values["do_ptc"] and isinstance(values["exp_times_flat"], (int, float)):
            problems.append("do_ptc needs flats at several exposure times: give exp_times_flat as a list of pairs")
        if values["do_ptc"] and isinstance(values["exp_times_flat"], list):
            kept = values["exp_times_flat"][values["n_discard_flat"] :]
            if sum(1 for t in set(kept) if kept.count(t) >= 2) < 3:
                problems.append("do_ptc needs at least 3 exposure times with two or more flats each")
        try:
            validity_range(
                values["certify_calib_begin_date"],
                values["certify_calib_end_date"],
                what=("certify_calib_begin_date", "certify_calib_end_date"),
            )
        except ValueError as err:
            problems.append(str(err))
        if values["do_defects"] and not values["generate_calibrations"]:
            problems.append(
                "do_defects needs generate_calibrations: true (defects use the new dark and flat)"
            )
        if not values["generate_calibrations"] and not values["do_verify"]:
            problems.append("generate_calibrations and do_verify are both false: nothing would be done")
        if (
            values["script_mode"] == "DARK"
            and values["generate_calibrations"]
            and not values["input_collections_dark"]
        ):
            problems.append(
                "script_mode DARK generates a dark from a bias found in input_collections_dark, which is empty"
            )
        if not str(values["calib_collection"]).strip():
            problems.append("calib_collection is empty")
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"invalid configuration: {problems[0]}")
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return ScriptConfig(instrument=instrument, values=values)
