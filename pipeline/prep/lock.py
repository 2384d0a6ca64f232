"""One job per output folder: a lock file, created atomically, held from before the job reads or
writes anything there until it ends (success, failure, Ctrl-C, SIGTERM).

Creation is exclusive, so of two jobs started together exactly one holds the lock and the other
is refused: ``O_CREAT | O_EXCL`` locally, a conditional PUT (``If-None-Match: *``) on S3. The
lock names its holder (host, pid and the pid's start time, run id, a token of its own). A lock
left by a job that is gone is recognised where that can be known, on the holder's host: its pid
is not alive, or is another process now (the start time differs); it is then taken over with
a log line, by a replace that fails if another job took it over first (S3: ``If-Match`` on its
ETag; locally: moved aside and compared). A lock from another host cannot be judged from here:
the job is refused, naming the holder and the file to remove once that job is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.config import OutputInTheWay

log = logging.getLogger(__name__)

ATTEMPTS = 20  # reads of a lock that is being written or taken over, before giving up
RETRY_S = 0.1
HOLDER_KEYS = {"host", "pid", "run_id", "since"}


@dataclass(frozen=True)
class Lock:
    """The lock this job holds at ``url``."""

    url: str
    data: bytes

    def check(self) -> None:
        """Refuse to report a dataset as ours when the lock is no longer ours (removed by hand,
        taken over): another job may have written in the folder meanwhile."""
        if storage.read_versioned(self.url)[0] != self.data:
            raise OutputInTheWay(
                f"output: the lock {self.url} is no longer this job's (removed or taken over); "
                "another job may have written there: rerun with existing_output=overwrite"
            )

    def release(self) -> None:
        """The lock removed, if it is still ours."""
        if storage.read_versioned(self.url)[0] == self.data:
            storage.remove(self.url)


@contextlib.contextmanager
def held(url: str, run_id: str) -> Iterator[Lock]:
    """The lock at ``url`` for the block (:func:`acquire`), released however the block ends."""
    lock = acquire(url, run_id)
    try:
        yield lock
    finally:
        lock.release()


def acquire(url: str, run_id: str) -> Lock:
    """The lock at ``url``, taken over from a holder known to be gone; refused while another
    job holds it."""
    pid = os.getpid()
    mine = {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": _pid_started(pid),
        "run_id": run_id,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "token": uuid.uuid4().hex,
    }
    data = json.dumps(mine, indent=1).encode()
    for _ in range(ATTEMPTS):
        if storage.create_exclusive(url, data):
            return Lock(url, data)
        raw, version = storage.read_versioned(url)
        holder = _parse(raw)
        if raw is None or holder is None:  # released meanwhile, or being written: look again
            time.sleep(RETRY_S)
            continue
        if not _gone(holder):
            raise OutputInTheWay(_refusal(url, holder))
        log.warning("%s: taking over the lock of a job that is gone (%s)", url, _describe(holder))
        if storage.replace_if_unchanged(url, raw, version, data):
            return Lock(url, data)
    raise OutputInTheWay(f"output: the lock {url} cannot be read or taken; if no job writes there, remove it")


def _refusal(url: str, holder: dict) -> str:
    where = "this host" if holder["host"] == socket.gethostname() else f"host {holder['host']}"
    return (
        f"output: another prep job writes there ({_describe(holder)}); lock {url}. "
        f"If no such job runs on {where} any more, remove the lock and rerun with existing_output=resume"
    )


def _describe(holder: dict) -> str:
    return f"host {holder['host']}, pid {holder['pid']}, run {holder['run_id']}, since {holder['since']}"


def _parse(raw: bytes | None) -> dict | None:
    """A lock's holder; None for bytes that are no lock of ours (yet: a writer between its
    exclusive create and its write)."""
    try:
        holder = json.loads(raw or b"")
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and HOLDER_KEYS <= set(holder) else None


def _gone(holder: dict) -> bool:
    """The holder is known to be gone: on this host, its pid is dead or is another process."""
    if holder["host"] != socket.gethostname():
        return False
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    started = holder.get("pid_started")
    return started is not None and _pid_started(pid) != started


def _pid_started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux): a pid reused by another process,
    common in containers, has another start time. None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
