"""One run per output folder: an exclusive lock held for the run's whole life.

``OUTPUT/.dapt-run.lock`` names its holder (pid, host, boot id, the process's start time, when it
took the lock, the launch). Three mechanisms, each covering what the others cannot:

* ``fcntl.flock`` on the open lock file: the kernel drops it when its holder dies, however it dies
  (SIGKILL included), so on one host a live holder is never taken for a dead one. On NFS, Linux
  maps ``flock`` onto NFS byte-range locks, seen by every client when the server supports locking
  (NLM, NFSv4), and seen by this client only under ``local_lock=flock|all``.
* the record: a lock file that nobody holds is stale only when its holder is provably gone: same
  host, same boot, and its pid dead or now belonging to a process started at another time (pid
  reuse). A holder on another host cannot be checked from here (its ``flock`` may not reach us
  over NFS): the run refuses, and ``break_lock=true`` forces it.
* ``O_CREAT | O_EXCL`` to create the file: atomic on local file systems and on NFSv3+, so two runs
  never both create a fresh lock.

Under several processes of one launch the main process takes the lock and the others learn the
outcome through a collective (:func:`dapt.core.guard.guarded_run`): the launch is one run, and no
environment variable has to be trusted to say which processes belong together.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

LOCK_NAME = ".dapt-run.lock"

logger = logging.getLogger(__name__)


class RunLocked(RuntimeError):
    """Another run holds the output folder (or may hold it: it cannot be checked from here)."""


@dataclass
class Holder:
    pid: int
    host: str
    boot_id: str
    process_start: Optional[int]  # clock ticks after boot (/proc/PID/stat): tells pid reuse apart
    started_at: str
    launch: Optional[str] = None  # torchrun's run id, or the rendezvous address

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started at {self.started_at}"

    @classmethod
    def this_process(cls) -> "Holder":
        launch = os.environ.get("TORCHELASTIC_RUN_ID") or (
            f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '')}" if "MASTER_ADDR" in os.environ else None)
        return cls(os.getpid(), socket.gethostname(), boot_id(), process_start_ticks(os.getpid()),
                   datetime.now().astimezone().isoformat(timespec="seconds"), launch)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks after boot), or None when there is no such process
    (or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the command name may hold spaces


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def gone_because(holder: Holder) -> Optional[str]:
    """Why ``holder`` (same host) is certainly gone, or None when it may still run."""
    if holder.boot_id and boot_id() and holder.boot_id != boot_id():
        return "the machine has rebooted since"
    if not _alive(holder.pid):
        return f"process {holder.pid} no longer exists"
    now = process_start_ticks(holder.pid)
    if holder.process_start is not None and now is not None and now != holder.process_start:
        return f"pid {holder.pid} now belongs to another process"
    return None


class RunLock:
    """``RunLock.acquire(output_dir)`` ... ``release()``; ``output_dir`` (and its parents) are created
    when missing and removed again on release when the run left them empty."""

    def __init__(self, path: Path, fd: int, created: list[Path]):
        self.path, self.fd, self.created = path, fd, created

    @classmethod
    def acquire(cls, output_dir: Path, *, force: bool = False) -> "RunLock":
        output_dir = Path(output_dir)
        created = [parent for parent in (output_dir, *output_dir.parents) if not parent.exists()][::-1]
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / LOCK_NAME
        for _ in range(5):  # the file may be released (unlinked) while we open it: start over
            try:
                fd, fresh = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, fresh = os.open(path, os.O_RDWR), False
                except FileNotFoundError:
                    continue
            try:
                taken = _take(fd, path, fresh, force)
            except BaseException:
                os.close(fd)
                raise
            if taken:
                return cls(path, fd, created)
            os.close(fd)
        raise RunLocked(f"output_dir {output_dir}: its lock file {path} keeps changing hands; is another run starting there?")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        finally:
            os.close(self.fd)  # drops the flock after the unlink: a waiter finds the file gone and starts over
            self.fd = None
        for directory in reversed(self.created):
            try:
                directory.rmdir()  # only an empty one: a run that failed before writing anything
            except OSError:
                break


def _take(fd: int, path: Path, fresh: bool, force: bool) -> bool:
    """Lock ``fd`` and write this process's record; False when ``path`` is no longer that file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        holder = _read(fd)
        who = holder.describe() if holder else "a run that is starting"
        raise RunLocked(f"output_dir {path.parent} is in use by another run ({who}; lock {path}): wait for it to end, "
                        "or choose another output_dir") from None
    if not _same_file(fd, path):
        return False
    if not fresh:
        _check_stale(_read(fd), path, force)
    record = json.dumps(asdict(Holder.this_process())).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    os.fsync(fd)
    return True


def _check_stale(holder: Optional[Holder], path: Path, force: bool) -> None:
    """A lock file nobody holds: take it over when its holder is certainly gone, else refuse."""
    if holder is None:
        if force:
            logger.warning(f"break_lock=true: taking over {path}, which holds no readable record")
            return
        raise RunLocked(f"output_dir {path.parent}: lock file {path} holds no readable record (a run killed while "
                        "starting?): if no run uses this folder, delete the file or set break_lock=true")
    if holder.host == socket.gethostname():
        reason = gone_because(holder)
        if reason is None:
            raise RunLocked(f"output_dir {path.parent} is in use by another run ({holder.describe()}; lock {path}): "
                            "wait for it to end, or choose another output_dir")
        logger.warning(f"taking over the lock of {holder.describe()}: {reason} (a run that was killed)")
        return
    if not force:
        raise RunLocked(f"output_dir {path.parent} is locked by {holder.describe()}, which cannot be checked from {socket.gethostname()}: "
                        "if that run is gone, set break_lock=true")
    logger.warning(f"break_lock=true: taking over the lock of {holder.describe()}")


def _read(fd: int) -> Optional[Holder]:
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"null")
        known = Holder.__dataclass_fields__
        return Holder(**{key: value for key, value in data.items() if key in known}) if isinstance(data, dict) else None
    except (ValueError, TypeError, OSError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
