"""The run folder: one live run per folder, and its log file.

* Names are unique per run: conf/config.yaml's default folder is runs/<date>/<time>-<pid>, so two
  runs started in the same second on one machine never meet (other ranks of a launch use rank 0's).
* A run holds its folder with an OS lock on <run>/run.lock (flock; the file names the holder's pid
  and host). A second run pointed at the same folder (hydra.run.dir=..., or resume=... while the
  first is still going) stops before it touches anything. The lock dies with its process, so a
  crashed run never leaves a stale lock behind.
* <run>/train.log gets every message of the `train` loggers: progress lines, "resumed from step N",
  "diffusion view saved to ...". Under Hydra this is the job's own log file (its file handler on the
  root logger); elsewhere (a Trainer built in Python) a handler is added here.
"""

import fcntl
import logging
import os
import socket
from pathlib import Path

LOCK_FILE = "run.lock"
LOG_FILE = "train.log"

log = logging.getLogger("train")
_HELD: dict[str, int] = {}  # lock file -> descriptor, for the folders this process holds


class RunFolderBusy(RuntimeError):
    pass


class RunFolder:
    """This process's hold on a run folder: the lock and (outside Hydra) the log file handler.
    Raises RunFolderBusy when another live process holds the folder."""

    def __init__(self, run_dir: Path):
        self.fd = claim_run_dir(run_dir)
        self.handler = attach_log_file(run_dir)

    def close(self) -> None:
        if self.handler is not None:
            log.removeHandler(self.handler)
            self.handler.close()
            self.handler = None
        if self.fd is not None:
            release_run_dir(self.fd)
            self.fd = None


def claim_run_dir(run_dir: Path) -> int:
    """Create `run_dir` and lock it for this process; returns the lock's file descriptor (open for
    the life of the run). Raises RunFolderBusy when another live process holds it. A folder this
    process already holds (a run that raised, resumed in the same interpreter) is handed over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    key = str(lock.resolve())
    if key in _HELD:
        return _HELD[key]
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunFolderBusy(
            f"run folder {run_dir} is in use by a live run ({holder}; lock {lock}). Two runs must not share a "
            "folder: start this one in a fresh folder (drop hydra.run.dir= to get a new one), or wait for that run "
            "to finish before resuming it."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _HELD[key] = fd
    return fd


def release_run_dir(fd: int) -> None:
    for key in [k for k, v in _HELD.items() if v == fd]:
        del _HELD[key]
    os.close(fd)  # closing the descriptor drops the flock


def check_run_dir_free(run_dir: Path) -> None:
    """Fail (RunFolderBusy) if a live run holds `run_dir`; called before Hydra writes into it."""
    if (run_dir / LOCK_FILE).is_file():
        release_run_dir(claim_run_dir(run_dir))


def attach_log_file(run_dir: Path) -> logging.Handler | None:
    """Make sure the `train` loggers reach <run>/train.log at INFO; returns the handler added here
    (None when one already writes there, e.g. Hydra's)."""
    path = (run_dir / LOG_FILE).resolve()
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    for logger in (log, logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == path:
                return None
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    return handler


def format_record(record: dict, total_steps: int) -> str:
    """One progress line; a metric that could not be measured (None) reads n/a."""

    def fmt(key, spec):
        value = record.get(key)
        return "n/a" if value is None else format(value, spec)

    return (
        f"step {record['step']}/{total_steps} | loss {fmt('loss', '.4f')} | acc {fmt('acc_mean', '.3f')} | "
        f"lr {fmt('lr', '.2e')} | grad norm {fmt('grad_norm', '.3f')} | "
        f"{fmt('tokens_per_s_per_gpu', ',.0f')} tok/s/gpu | mfu {fmt('mfu', '.3f')} | "
        f"{fmt('elapsed_s', '.1f')} s"
    )
