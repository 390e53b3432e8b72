"""Where a result came from: command, commit, device, library versions, time.

Every results file carries this so a number can be traced to the exact code and machine that
produced it (a dirty tree is flagged: the commit alone would not reproduce it).
"""

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_state() -> dict:
    """HEAD commit and whether tracked files differ from it (None outside a git checkout).
    $ORTHRUS_COMMIT wins: trees copied to a GPU machine may carry a stale .git or none."""
    if os.environ.get("ORTHRUS_COMMIT"):
        return {"commit": os.environ["ORTHRUS_COMMIT"], "dirty": None}

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def device_name(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line() -> list[str]:
    """This process's arguments as typed: `-m scripts.x ...` for a module run (whose sys.argv[0] is the
    module's absolute file path), else sys.argv."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return sys.argv


def provenance(device: str | torch.device = "cpu", command: list[str] | None = None) -> dict:
    return {
        "command": shlex.join([Path(sys.executable).name, *(command if command is not None else command_line())]),
        "git": git_state(),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
