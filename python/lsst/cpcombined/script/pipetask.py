"""Run ``pipetask`` in-process (same arguments as the command line).

Running the real ``pipetask`` command-line code in the current process keeps
exactly the behaviour users get from ``pipetask run`` while avoiding the
interpreter start-up per invocation; with ``-j 1`` (the default) every
quantum runs in this process too.  `run_pipetask` captures the log records
emitted during the run so that a failure can be reported with its cause.

Progress of a run is read through `lsst.cpcombined.script.progress`.
"""

from __future__ import annotations

__all__ = ("PipetaskResult", "pipetask_run_args", "run_pipetask")

import dataclasses
import logging
import os
import shlex
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..env import package_root
from .progress import ProgressEvent, ProgressLogging

_LOG = logging.getLogger(__name__)

#: Only one in-process pipetask at a time: pipetask configures global logging.
_LOCK = threading.Lock()


@dataclasses.dataclass
class PipetaskResult:
    """Outcome of one ``pipetask`` invocation.

    Attributes
    ----------
    exit_code
        0 on success.
    args
        The arguments ``pipetask`` was called with.
    errors
        Messages of the ERROR (and CRITICAL) log records and of the
        exception that ended the run, most informative first.
    warnings
        Messages of the WARNING log records.
    """

    exit_code: int
    args: list[str]
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.exit_code == 0

    @property
    def command(self) -> str:
        """The equivalent shell command."""
        return "pipetask " + " ".join(shlex.quote(a) for a in self.args)

    def error_summary(self, limit: int = 5) -> str:
        """A short, human-readable cause of a failure."""
        seen: list[str] = []
        for msg in self.errors:
            first = msg.strip().splitlines()[0] if msg.strip() else msg
            if first and first not in seen:
                seen.append(first)
        return "; ".join(seen[:limit]) or f"pipetask exited with code {self.exit_code}"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - malformed record
            msg = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            msg = f"{msg}: {record.exc_info[1]}"
        (self.errors if record.levelno >= logging.ERROR else self.warnings).append(msg)


def _root_cause(err: BaseException) -> str:
    parts = [f"{type(err).__name__}: {err}"]
    seen = {id(err)}
    cur = err.__cause__ or err.__context__
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return parts[-1] if len(parts) > 1 else parts[0]


def pipetask_run_args(
    repo: str | os.PathLike,
    pipeline: str | os.PathLike,
    *,
    inputs: Iterable[str],
    output: str,
    data_query: str,
    config: Mapping[str, object] | None = None,
    extra: Sequence[str] = (),
    register_dataset_types: bool = True,
    log_level: str = "INFO",
) -> list[str]:
    """Arguments of ``pipetask run`` for one pipeline.

    Parameters
    ----------
    repo
        Butler repository.
    pipeline
        Pipeline file (``#label,...`` subsets allowed).
    inputs
        Input collections, in search order.
    output
        Output CHAINED collection (a timestamped RUN is added to it).
    data_query
        Data ID query (``-d``).
    config
        ``{"label:field": value}`` config overrides (``-c``).
    extra
        More ``pipetask run`` arguments (e.g. ``["-j", "2"]``).
    register_dataset_types
        Pass ``--register-dataset-types``.
    log_level
        Log level of ``lsst.cpcombined`` and the task loggers.
    """
    args = ["--log-level", log_level.upper(), "run", "-b", str(repo), "-p", str(pipeline)]
    args += ["-i", ",".join(inputs), "-o", output, "-d", data_query]
    for key, value in (config or {}).items():
        args += ["-c", f"{key}={value}"]
    if register_dataset_types:
        args.append("--register-dataset-types")
    args += list(extra)
    return args


def run_pipetask(
    args: Sequence[str], progress: Callable[[ProgressEvent], None] | None = None
) -> PipetaskResult:
    """Run ``pipetask`` with ``args`` in this process.

    Never raises for a failed run: the result holds the exit code and the
    error messages logged or raised.

    Parameters
    ----------
    args
        ``pipetask`` arguments.
    progress
        Receives a `ProgressEvent` for each progress message of the run
        (called from the thread running the quanta; keep it quick).  The
        `PROGRESS_LOGGERS` are raised to INFO for the run, their INFO
        records going to ``progress`` only: what the terminal and the task
        logs show does not change.  A failing ``progress`` is logged once
        and no longer called; the run goes on.
    """
    from lsst.ctrl.mpexec.cli.pipetask import cli

    os.environ.setdefault("CPCOMBINED_DIR", str(package_root()))
    capture = _Capture()
    root = logging.getLogger()
    with _LOCK:
        saved_level = root.level
        saved_handlers = list(root.handlers)
        root.addHandler(capture)
        exit_code = 0
        try:
            with ProgressLogging(progress):
                # With standalone_mode=False click returns the exit code of
                # an Exit (how pipetask reports failures) instead of raising.
                rv = cli.main(list(args), standalone_mode=False, prog_name="pipetask")
            if isinstance(rv, int):
                exit_code = rv
        except SystemExit as err:
            exit_code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        except Exception as err:  # noqa: BLE001 - report any failure with its cause
            exit_code = 1
            capture.errors.insert(0, _root_cause(err))
            _LOG.debug("pipetask raised", exc_info=True)
        finally:
            root.removeHandler(capture)
            # pipetask installs its own handlers and levels; restore ours.
            for h in list(root.handlers):
                if h not in saved_handlers:
                    root.removeHandler(h)
            for h in saved_handlers:
                if h not in root.handlers:
                    root.addHandler(h)
            root.setLevel(saved_level)
    if exit_code != 0 and not capture.errors:
        capture.errors.append(f"pipetask exited with code {exit_code}")
    return PipetaskResult(exit_code=exit_code, args=list(args), errors=capture.errors, warnings=capture.warnings)
