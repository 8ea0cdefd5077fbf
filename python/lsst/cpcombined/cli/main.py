"""The ``cpcombined`` command.

Subcommands: ``init`` (create a repository, or check an existing one),
``ingest`` (raw files), ``simulate`` (simulated camera frames), ``run`` (the
whole daily procedure), ``certify`` (certify a calibration when its decision
allows it), ``schema`` (the procedure's configuration schema), ``history``
(certified calibrations across days) and ``prune`` (remove the
intermediates of certified generation runs).
"""

from __future__ import annotations

__all__ = ("main",)

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

_LOG = logging.getLogger("lsst.cpcombined.cli.main")

type Runner = Callable[[argparse.Namespace], int]

#: Subcommand name -> (help, function adding its arguments and returning its runner).
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {}


def command(name: str, help: str):
    """Register a subcommand: decorates a function that adds the
    subcommand's arguments to its parser and returns its runner."""

    def decorator(add_args: Callable[[argparse.ArgumentParser], Runner]):
        _COMMANDS[name] = (help, add_args)
        return add_args

    return decorator


def _butler(repo: str, writeable: bool = True):
    from lsst.daf.butler import Butler

    return Butler.from_config(repo, writeable=writeable)


# -- init ------------------------------------------------------------------------


@command("init", "Create a butler repository ready for cp_combined (both instruments registered).")
def _init_args(p: argparse.ArgumentParser):
    p.add_argument("repo", help="Repository root to create.")
    p.add_argument(
        "--registry",
        metavar="URL",
        help="Registry database URL, e.g. postgresql://user@host:5432/db (default: SQLite in the repo).",
    )
    p.add_argument("--seed-config", metavar="FILE", help="Extra butler seed configuration (YAML).")

    def run(args: argparse.Namespace) -> int:
        from ..repo.create import RepositoryExistsError, create_repo, prepare_existing_repo

        try:
            create_repo(args.repo, registry_db=args.registry, seed_config=args.seed_config)
        except RepositoryExistsError:
            # An existing repository: the instruments it has are checked
            # (identical records are left alone, differing ones refused); one
            # populated by the Science Pipelines gets nothing more.
            butler = _butler(args.repo)
            before = {record.name for record in butler.registry.queryDimensionRecords("instrument")}
            names = prepare_existing_repo(butler)
            added = [name for name in names if name not in before]
            done = f"registered {' and '.join(added)}" if added else "nothing was changed"
            print(f"{args.repo} is already a butler repository with {' and '.join(names)}: {done}")
            return 0
        print(f"Created repository {args.repo} (instruments LATISS, LSSTComCam registered)")
        return 0

    return run


# -- ingest ----------------------------------------------------------------------


@command("ingest", "Ingest raw camera files (idempotent; nothing is registered if a file is bad).")
def _ingest_args(p: argparse.ArgumentParser):
    p.add_argument("repo")
    p.add_argument("files", nargs="+", help="Raw FITS files.")
    p.add_argument("--instrument", help="Require every file to be of this instrument.")
    p.add_argument("--run", help="RUN collection (default INSTRUMENT/raw/all).")
    p.add_argument(
        "--transfer",
        default="copy",
        choices=("copy", "move", "link", "hardlink", "symlink", "relsymlink", "direct", "auto"),
        help="How files get into the datastore (default copy).",
    )
    p.add_argument("--skip-bad", action="store_true", help="Ingest the good files even if some are bad.")
    p.add_argument(
        "--allow-odd-headers",
        action="store_true",
        help=(
            "Accept raws with no or an unknown image type, or no EXPTIME (exposure time -1 s), as obs_lsst's "
            "translator does for known odd real headers."
        ),
    )
    p.add_argument("--no-pixel-check", action="store_true", help="Do not read the pixels before ingesting.")

    def run(args: argparse.Namespace) -> int:
        from ..obs.ingest import ingest_raws

        result = ingest_raws(
            _butler(args.repo),
            args.files,
            instrument=args.instrument,
            run=args.run,
            transfer=args.transfer,
            check_pixels=not args.no_pixel_check,
            skip_bad=args.skip_bad,
            allow_odd=args.allow_odd_headers,
        )
        for msg in result.failed.values():
            print(f"FAILED {msg}", file=sys.stderr)
        print(
            f"ingested {len(result.ingested)} file(s), {len(result.already_present)} already present, "
            f"{len(result.failed)} failed"
        )
        for exposure in result.exposures:
            print(exposure)
        return 1 if result.failed else 0

    return run


# -- simulate --------------------------------------------------------------------


@command("simulate", "Simulate camera frames with known truth, write and ingest them; prints exposure ids.")
def _simulate_args(p: argparse.ArgumentParser):
    p.add_argument("repo")
    p.add_argument("--instrument", required=True, choices=("LATISS", "LSSTComCam"))
    p.add_argument("--image-type", required=True, choices=("bias", "dark", "flat"))
    p.add_argument("--count", type=int, help="Frames per exposure time (default 1 per listed time).")
    p.add_argument(
        "--exp-time",
        type=float,
        nargs="+",
        help="Exposure time(s) in s; with several values and no --count, one frame per value.",
    )
    p.add_argument("--filter", help="Physical filter (flats default to the instrument's flat filter).")
    p.add_argument("--truth", metavar="TRUTH.yaml", help="Truth mapping (or a run config with simulation:).")
    p.add_argument("--seed", type=int, help="Override the truth's seed.")
    p.add_argument("--geometry-scale", type=float, help="Override the truth's geometry_scale.")
    p.add_argument("--detectors", nargs="+", help="Detector ids or names (default all).")
    p.add_argument("--discard", action="store_true", help="Frames to throw away (no fault injection).")
    p.add_argument(
        "--staging-dir",
        help="Where the files are written before they are ingested (moved into the repository; "
        "default: a temporary directory).",
    )

    def run(args: argparse.Namespace) -> int:
        from ..simulation import SimulationTruth
        from ..simulation.camera import SimulatedCamera

        truth = (
            SimulationTruth.from_file(args.instrument, args.truth)
            if args.truth
            else SimulationTruth(args.instrument)
        )
        overrides = {}
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.geometry_scale is not None:
            overrides["geometry_scale"] = args.geometry_scale
        if overrides:
            truth = truth.with_overrides(**overrides)
        if args.image_type == "bias":
            times = [0.0] * (args.count or 1)
            if args.exp_time and any(t != 0 for t in args.exp_time):
                raise ValueError("biases have zero exposure time; do not pass --exp-time")
        else:
            if not args.exp_time:
                raise ValueError(f"--exp-time is required for {args.image_type} frames")
            times = [t for t in args.exp_time for _ in range(args.count or 1)]
        if args.count is not None and args.count < 1:
            raise ValueError("--count must be at least 1")
        camera = SimulatedCamera(
            _butler(args.repo), truth, detectors=args.detectors, staging_dir=args.staging_dir
        )
        ids = camera.take(args.image_type, times, physical_filter=args.filter, discard=args.discard)
        for exposure in ids:
            print(exposure)
        return 0

    return run


# -- certify -----------------------------------------------------------------------


@command(
    "certify",
    "Certify a generated calibration into a CALIBRATION collection "
    "(bias/dark/flat only with a 'yes' decision).",
)
def _certify_args(p: argparse.ArgumentParser):
    p.add_argument("repo")
    p.add_argument("--dataset-type", required=True, help="bias, dark, flat, defects or ptc.")
    p.add_argument(
        "--run", required=True, help="Collection holding the generated calibration (RUN or CHAINED)."
    )
    p.add_argument("--collection", required=True, help="CALIBRATION collection to certify into.")
    p.add_argument("--begin", default="1950-01-01", help="Start of validity (TAI, ISO-8601).")
    p.add_argument("--end", default="2050-01-01", help="End of validity (TAI, ISO-8601, exclusive).")
    p.add_argument("--decision-collection", help="Collection with the cpcVerify<Type>Decision dataset.")
    p.add_argument(
        "--no-decision", action="store_true", help="Certify bias/dark/flat without a decision (logged)."
    )
    p.add_argument("--chain", help="CHAINED collection to prepend the calibration collection to.")
    p.add_argument("--where", default="", help="Data ID expression restricting what is certified.")

    def run(args: argparse.Namespace) -> int:
        from ..repo.certify import CertificationError, certify_calibration

        try:
            result = certify_calibration(
                _butler(args.repo),
                dataset_type=args.dataset_type,
                run=args.run,
                calib_collection=args.collection,
                begin=args.begin,
                end=args.end,
                decision_collection=args.decision_collection,
                require_decision=not args.no_decision,
                chain=args.chain,
                where=args.where,
                what=("--begin", "--end"),
            )
        except CertificationError as err:
            print(f"cpcombined certify: error: {err}", file=sys.stderr)
            return 1
        print(result.summary())
        return 0

    return run


# -- run -------------------------------------------------------------------------


@command("run", "Run the daily calibration procedure with the simulated camera and local pipelines.")
def _run_args(p: argparse.ArgumentParser):
    p.add_argument("config", help="Run configuration YAML (script keys + instrument, simulation, execution).")
    p.add_argument("--repo", help="Butler repository (created if missing; default ./cpcombined_repo).")
    p.add_argument("--summary-json", metavar="FILE", help="Write the run summary as JSON.")
    p.add_argument("--report", metavar="FILE", help="Write a self-contained HTML report.")
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help=(
            "Resume this run (stopped, killed or failed). Without it an unfinished run with the same "
            "configuration is resumed and otherwise a new run starts; a run that succeeded is never "
            "re-entered."
        ),
    )

    def run(args: argparse.Namespace) -> int:
        from ..script.runner import run_procedure

        code, _ = run_procedure(
            args.config,
            repo=args.repo,
            summary_json=args.summary_json,
            report=args.report,
            resume=args.resume,
        )
        return code

    return run


# -- schema ------------------------------------------------------------------------------


@command("schema", "Print the configuration schema of the procedure (the ScriptQueue script's) as YAML.")
def _schema_args(p: argparse.ArgumentParser):
    p.add_argument("--instrument", default="LATISS", choices=("LATISS", "LSSTComCam"))

    def run(args: argparse.Namespace) -> int:
        import yaml

        from ..script.schema import get_schema

        class Dumper(yaml.SafeDumper):
            """Block mappings; lists of plain values on one line."""

        def represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
            flow = all(not isinstance(v, (dict, list)) for v in data)
            return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

        Dumper.add_representer(list, represent_list)
        print(yaml.dump(get_schema(args.instrument), Dumper=Dumper, sort_keys=False, width=100), end="")
        return 0

    return run


# -- history ---------------------------------------------------------------------------


@command(
    "history",
    "Per calibration type and amplifier, how the certified calibrations compare over time "
    "(bias level and noise, dark current, flat response, PTC gain and read noise, defect counts).",
)
def _history_args(p: argparse.ArgumentParser):
    p.add_argument("repo")
    p.add_argument("--instrument", required=True, choices=("LATISS", "LSSTComCam"))
    p.add_argument(
        "--calib-collection",
        help="CALIBRATION collection, or a CHAINED collection of them (default INSTRUMENT/calib/daily).",
    )
    p.add_argument("--detectors", nargs="+", help="Detector ids or names (default all).")
    p.add_argument("--html", metavar="FILE", help="Write a self-contained HTML page with plots and tables.")
    p.add_argument("--csv", metavar="FILE", help="Write the full history (a row per dataset, amp, quantity).")
    p.add_argument(
        "--n-sigma",
        type=float,
        default=5.0,
        help="Flag changes beyond this many sigma of the earlier scatter (default 5).",
    )
    p.add_argument(
        "--last",
        type=int,
        default=8,
        help="Certifications shown per row in the terminal (0: all; default 8).",
    )

    def run(args: argparse.Namespace) -> int:
        from .history import collect_history, format_history, history_html

        if args.last < 0:
            raise ValueError(f"--last must be 0 (all) or a positive number, not {args.last}")
        collection = args.calib_collection or f"{args.instrument}/calib/daily"
        try:
            table = collect_history(
                _butler(args.repo, writeable=False),
                args.instrument,
                calib_collection=collection,
                detectors=args.detectors,
            )
        except LookupError as err:
            raise LookupError(f"{err}: name an existing one with --calib-collection") from None
        print(format_history(table, n_sigma=args.n_sigma, last=args.last or None), end="")
        if args.csv:
            table.write(args.csv, format="ascii.csv", overwrite=True)
            print(f"wrote {args.csv}")
        if args.html:
            with open(args.html, "w") as f:
                f.write(history_html(table, n_sigma=args.n_sigma))
            print(f"wrote {args.html}")
        return 0

    return run


# -- prune -------------------------------------------------------------------------------


@command(
    "prune",
    "Remove the per-exposure intermediates (cpc*Proc, cpcFlatStatistics) of generation runs whose "
    "products are certified, as `cpcombined run` does after a run; says what it removed (bytes).",
)
def _prune_args(p: argparse.ArgumentParser):
    p.add_argument("repo")
    p.add_argument(
        "--run", nargs="+", default=[], metavar="RUN", help="RUN collections to empty of intermediates."
    )
    p.add_argument(
        "--collection",
        nargs="+",
        default=[],
        metavar="COLLECTION",
        help="RUN collections, or CHAINED ones (a pipetask --output): their own RUN collections "
        "(COLLECTION/...), never their inputs.",
    )
    p.add_argument("--dry-run", action="store_true", help="Say what would be removed; remove nothing.")
    p.add_argument(
        "--force",
        action="store_true",
        help="Also remove the intermediates of runs whose products are not certified (e.g. rejected ones).",
    )

    def run(args: argparse.Namespace) -> int:
        from ..repo.prune import FileJournal, prune_intermediates, resolve_runs

        if not args.run and not args.collection:
            raise ValueError("name what to prune with --run RUN... and/or --collection COLLECTION...")
        butler = _butler(args.repo, writeable=not args.dry_run)
        runs = resolve_runs(butler, runs=args.run, collections=args.collection)
        journal = FileJournal(os.path.join(args.repo, "cpcombined", "prune.json"))
        report = prune_intermediates(butler, runs, dry_run=args.dry_run, force=args.force, journal=journal)
        for line in report.lines():
            print(line)
        return 1 if report.refused else 0

    return run


def build_parser() -> argparse.ArgumentParser:
    """The ``cpcombined`` argument parser."""
    parser = argparse.ArgumentParser(prog="cpcombined", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--log-level", default="INFO", help="Log level for lsst.cpcombined (DEBUG, INFO, WARNING...)."
    )
    parser.add_argument(
        "--debug", action="store_true", help="Show the full traceback of an unexpected error."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_runner=add_args(p))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cpcombined`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lsst.cpcombined").setLevel(args.log_level.upper())
    from ..env import package_root

    os.environ.setdefault("CPCOMBINED_DIR", str(package_root()))
    try:
        return int(args._runner(args) or 0)
    except KeyboardInterrupt:
        print(f"cpcombined {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"cpcombined {args.command}: error: {_error_text(err)}", file=sys.stderr)
        return 1


#: Exceptions whose message is written for users (shown without their type).
_USER_ERRORS = (
    "ConfigError",
    "IngestError",
    "RawFormatError",
    "TruthError",
    "PreflightError",
    "StateFileError",
    "RunInProgress",
    "CertificationError",
)


def _error_text(err: BaseException) -> str:
    """One line for an error: its message for errors meant for users and
    bad input (ValueError, LookupError, missing files), otherwise its type
    and message and a pointer to ``--debug``."""
    names = {cls.__name__ for cls in type(err).__mro__}
    message = str(err).strip() or type(err).__name__
    if names & set(_USER_ERRORS) or isinstance(err, (ValueError, LookupError, FileNotFoundError)):
        return message
    return f"{type(err).__name__}: {message} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
