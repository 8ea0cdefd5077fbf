"""Warm pipetask worker processes for the local pipeline service.

A ``pipetask`` subprocess spends ~5-6 s of CPU importing the middleware,
astropy, scipy and the numba kernels before it runs its first quantum.  When
the local service runs several jobs at once, each job beyond the in-process
one used to pay that again; a `WarmWorker` pays it once, ahead of time, and
then runs jobs one after another (each job still gets its own ``pipetask``
invocation, butler and quantum graph; only the interpreter is reused).

A job's progress (`~lsst.cpcombined.script.progress.ProgressEvent`, one
per quantum) comes back through the worker's pipe ahead of its result.
"""

from __future__ import annotations

__all__ = ("HelperProcess", "WarmWorker", "WorkerDied", "die_with_parent")

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

_LOG = logging.getLogger(__name__)

#: Modules a worker imports before its first job.
_WARM_IMPORTS = (
    "lsst.ctrl.mpexec.cli.pipetask",
    "lsst.cpcombined.tasks.isr",
    "lsst.cpcombined.tasks.combine",
    "lsst.cpcombined.tasks.verify_detector",
    "lsst.cpcombined.tasks.ptc_extract",
)


def die_with_parent(parent_pid: int) -> None:
    """In a child process: get SIGKILL when the parent dies (Linux), so that
    a killed procedure leaves no pipetask running behind it.

    The kernel only signals a parent death that comes after this call: a
    child whose parent ``parent_pid`` is already gone (killed while the
    child was starting) ends here at once, before it can run a job it was
    sent.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: only the check below
        pass
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


class HelperProcess:
    """A spawned helper process of this one, spoken to through a pipe: it
    runs ``target(conn, parent_pid)`` (a loop that ends when the pipe is
    closed) and dies with this process.

    Parameters
    ----------
    target
        The child's function (module level: the process is spawned).
    name
        Process name.
    """

    def __init__(self, target: Any, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, os.getpid()), daemon=True, name=name)
        self.process.start()
        child.close()

    def kill(self) -> None:
        """End the process now."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self._conn.close()

    def close(self) -> None:
        """Let the process exit (closing its pipe ends its loop); killed if
        it has not ended after 10 s."""
        self._conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)


class WorkerDied(RuntimeError):
    """The worker process ended while running a job (killed or crashed)."""


def _worker_loop(
    conn: multiprocessing.connection.Connection, parent_pid: int
) -> None:  # pragma: no cover - child process
    """Body of a worker process: import, then run the jobs received on
    ``conn`` until it is closed.

    A job is ``(pipetask arguments, whether to send progress)``; the
    worker answers ``("progress", event fields)`` messages while it runs
    (if asked to), then ``("result", exit code, errors)``.
    """
    import importlib

    die_with_parent(parent_pid)
    for name in _WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # a job that needs it reports the error itself
            pass
    from .pipetask import run_pipetask

    def send_progress(event: Any) -> None:
        conn.send(("progress", tuple(event)))

    while True:
        try:
            args, want_progress = conn.recv()
        except (EOFError, OSError):
            return
        res = run_pipetask(args, progress=send_progress if want_progress else None)
        conn.send(("result", res.exit_code, [] if res.ok else [res.error_summary()]))


class WarmWorker(HelperProcess):
    """A pipetask worker process (started at once, imports in the background).

    Jobs run one at a time: `run` blocks until the job ends, so call it from
    a thread.  `kill` ends the process (and a job it runs); a killed or
    crashed worker is not reused.
    """

    def __init__(self) -> None:
        super().__init__(_worker_loop, "cpcombined-pipetask")

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def run(
        self, args: Sequence[str], progress: Callable[[tuple], None] | None = None
    ) -> tuple[int, list[str]]:
        """Run one ``pipetask`` job; return ``(exit code, errors)``.

        Parameters
        ----------
        args
            ``pipetask`` arguments.
        progress
            Receives the job's progress events (tuples of
            `~lsst.cpcombined.script.progress.ProgressEvent` fields), in
            the calling thread; an exception it raises is logged once and
            it is not called again.

        Raises
        ------
        WorkerDied
            If the process ended before answering.
        """
        try:
            self._conn.send((list(args), progress is not None))
            while True:
                message = self._conn.recv()
                if message[0] == "result":
                    return message[1], message[2]
                if progress is not None:
                    try:
                        progress(message[1])
                    except Exception:  # noqa: BLE001 - progress must never break a job
                        _LOG.warning("Progress reporting failed; the job goes on without it.", exc_info=True)
                        progress = None
        except (EOFError, OSError, BrokenPipeError) as err:
            self.process.join(timeout=5)
            raise WorkerDied(
                f"pipetask worker process {self.pid} ended (exit code {self.process.exitcode})"
            ) from err
