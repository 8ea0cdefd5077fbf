"""Persistent progress of procedure runs: which run to start or resume.

Every run of the procedure on a repository has a run id and a state file,
``REPO/cpcombined/runs/<instrument>/<run id>.json``, updated atomically after every step
(exposures acquired, jobs finished) and holding the run's status:

``running``
    in progress, or killed (then no process holds the repository lock);
``stopped``
    interrupted (SIGINT/SIGTERM) with a summary written;
``succeeded``, ``failed``
    finished.

`RunBook.start` decides what a new invocation does, and says so:

- with ``resume=RUN_ID``: resume that run, unless it succeeded (a finished
  run is never re-entered) or was started with another configuration;
- otherwise, resume the latest *unfinished* run (``running`` or
  ``stopped``) with the same configuration, or start a new run with a new id
  (a finished run with the same configuration is reported, not replayed:
  tomorrow's daily run takes new exposures).

Only one run per instrument at a time works on a repository
(`RunBook.lock`): a second invocation fails at once naming the run in
progress (runs of different instruments may share a repository).
"""

from __future__ import annotations

__all__ = ("RunBook", "RunInProgress", "RunSelection", "RunState", "StateFileError", "config_key")

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: Statuses of a run that has ended.
FINISHED = ("succeeded", "failed")
#: Statuses a run is resumed from without being asked.
RESUMABLE = ("running", "stopped")
STATUSES = FINISHED + RESUMABLE


class StateFileError(RuntimeError):
    """A run's state file is unreadable or not a run state."""


class RunInProgress(RuntimeError):
    """Another run holds the repository."""


def config_key(
    instrument: str, config: Mapping[str, Any], simulation: Mapping[str, Any] | None = None
) -> str:
    """Stable key of a run configuration (same configuration → same key).

    The repository location is not part of the key, so a moved or copied
    repository still resumes its runs.
    """
    doc = {
        "instrument": instrument,
        "config": {k: v for k, v in config.items() if k != "repo"},
        "simulation": simulation or {},
    }
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class RunState:
    """One run's state: a small JSON document written atomically on every
    change.

    Parameters
    ----------
    path
        The run's state file.
    data
        Initial content (a new run); `None` reads the file.

    Raises
    ------
    StateFileError
        The file is empty, truncated, not JSON or not a run state.
    """

    def __init__(self, path: str | os.PathLike, data: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if data is None:
            self._data = self._read(self.path)
        else:
            self._data = dict(data)
            self._write()

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        fix = "move it away to start afresh (the run's exposures and outputs stay in the repository)"
        try:
            text = path.read_text()
        except OSError as err:
            raise StateFileError(f"cannot read run state {path}: {err.strerror}; {fix}") from None
        if not text.strip():
            raise StateFileError(f"run state {path} is empty; {fix}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise StateFileError(
                f"run state {path} is not valid JSON ({err.msg}, line {err.lineno}); {fix}"
            ) from None
        if not isinstance(data, dict):
            raise StateFileError(f"run state {path} holds a {type(data).__name__}, not a run state; {fix}")
        problems = [
            key
            for key, kind in (("run_id", str), ("config_key", str), ("status", str))
            if not isinstance(data.get(key), kind)
        ]
        if data.get("status") not in STATUSES:
            problems.append("status")
        for key in ("acquired", "jobs"):
            if key in data and not isinstance(data[key], dict):
                problems.append(key)
        if problems:
            raise StateFileError(
                f"run state {path} has missing or invalid {', '.join(sorted(set(problems)))}; {fix}"
            )
        return data

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    @property
    def run_id(self) -> str:
        """The run id."""
        return self._data["run_id"]

    @property
    def status(self) -> str:
        """The run's status (see the module docstring)."""
        return self._data["status"]

    def get(self, key: str, default: Any = None) -> Any:
        """A stored value."""
        with self._lock:
            return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store a value and write the file atomically."""
        with self._lock:
            self._data[key] = value
            self._write()

    def set_status(self, status: str, detail: str = "") -> None:
        """Record the run's status (and when it changed)."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        with self._lock:
            self._data["status"] = status
            self._data["status_time"] = _now()
            self._data["status_detail"] = detail
            self._write()


@dataclasses.dataclass(frozen=True)
class RunSelection:
    """What `RunBook.start` decided.

    Attributes
    ----------
    state
        The run's state.
    resumed
        Whether an existing run is resumed.
    message
        One line saying what happens, for the user.
    """

    state: RunState
    resumed: bool
    message: str


class RunBook:
    """The runs of one instrument in one repository
    (``REPO/cpcombined/runs/<instrument>``).

    Parameters
    ----------
    repo
        Repository root directory.
    instrument
        Instrument name.
    """

    def __init__(self, repo: str | os.PathLike, instrument: str) -> None:
        self.repo = Path(repo)
        self.instrument = instrument
        self.directory = self.repo / "cpcombined" / "runs" / instrument

    def _states(self) -> list[RunState]:
        if not self.directory.is_dir():
            return []
        return [RunState(p) for p in sorted(self.directory.glob("*.json"))]

    def state(self, run_id: str) -> RunState:
        """The state of run ``run_id``.

        Raises
        ------
        LookupError
            No such run in this repository.
        """
        path = self.directory / f"{run_id}.json"
        if not path.exists():
            known = ", ".join(s.run_id for s in self._states()) or "none"
            raise LookupError(f"no run {run_id!r} in {self.repo} (runs: {known})")
        return RunState(path)

    @contextlib.contextmanager
    def lock(self, run_hint: str = "") -> Iterator[None]:
        """Hold the repository's run lock for the duration of the context.

        Raises
        ------
        RunInProgress
            Another process holds it (the message names its run and pid).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Path(path).read_text().strip() or "another run"
                raise RunInProgress(
                    f"{self.instrument} {holder} is already in progress on {self.repo}; wait for it to end "
                    f"(or stop it) before starting another {self.instrument} run on this repository"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"run {run_hint} (pid {os.getpid()})".encode())
            yield
        finally:
            os.close(fd)

    def set_lock_holder(self, run_id: str) -> None:
        """Name the run holding the lock (for another process's message)."""
        (self.directory / ".lock").write_text(f"run {run_id} (pid {os.getpid()})")

    def _new_id(self) -> str:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id, n = stamp, 1
        while (self.directory / f"{run_id}.json").exists():
            n += 1
            run_id = f"{stamp}-{n}"
        return run_id

    def start(self, key: str, *, resume: str | None = None) -> RunSelection:
        """Choose the run to work on (call while holding `lock`).

        Parameters
        ----------
        key
            `config_key` of the configuration.
        resume
            Run id to resume (``--resume``); `None` to decide automatically.

        Raises
        ------
        LookupError
            ``resume`` names no run of this repository.
        ValueError
            ``resume`` names a run that succeeded, or one started with
            another configuration.
        StateFileError
            A state file is unreadable.
        """
        if resume is not None:
            state = self.state(resume)
            if state.status == "succeeded":
                raise ValueError(
                    f"run {resume} succeeded ({state.get('status_time')}); a finished run is not re-entered: "
                    "run again without --resume to start a new run"
                )
            if state.get("config_key") != key:
                raise ValueError(
                    f"run {resume} was started with another configuration; resume it with the same "
                    "configuration file and simulation truth"
                )
            state.set_status("running")
            return RunSelection(
                state, True, f"Resuming run {resume} (was {state.get('status_detail') or 'unfinished'})"
            )
        same = [s for s in self._states() if s.get("config_key") == key]
        unfinished = [s for s in same if s.status in RESUMABLE]
        if unfinished:
            state = unfinished[-1]
            how = "stopped" if state.status == "stopped" else "interrupted"
            state.set_status("running")
            return RunSelection(
                state,
                True,
                f"Resuming unfinished run {state.run_id} ({how}; its exposures and finished jobs are reused)",
            )
        run_id = self._new_id()
        state = RunState(
            self.directory / f"{run_id}.json",
            {"run_id": run_id, "config_key": key, "status": "running", "started": _now()},
        )
        message = f"Starting new run {run_id}"
        if same:
            last = same[-1]
            message += (
                f" (the last run with this configuration, {last.run_id}, {last.status} at "
                f"{last.get('status_time')}; finished runs are not repeated)"
            )
        return RunSelection(state, False, message)
