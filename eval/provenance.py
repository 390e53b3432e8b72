"""Where a result came from: command, commit, dirty flag, hash of the sources that ran, device, versions, time.

Every results file carries this so a number can be traced to the exact code and machine that
produced it. Nothing here is typed by hand:
  * `git`: the commit and whether tracked files differ from it. A GPU machine often receives a copy
    of the working tree without .git, so the launcher computes both where the checkout is and passes
    them as $ORTHRUS_COMMIT / $ORTHRUS_DIRTY (`git`'s "source" says which way they were found):
        ORTHRUS_COMMIT=$(git rev-parse HEAD) \\
        ORTHRUS_DIRTY=$(git status --porcelain --untracked-files=no | grep -q . && echo true || echo false)
  * `source_hash`: sha256 over the repository's Python files loaded by this process (path and bytes),
    computed where they ran, so a copied or edited tree is told apart from the commit it claims.
"""

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_state() -> dict:
    """{"commit", "dirty", "source"}: from $ORTHRUS_COMMIT/$ORTHRUS_DIRTY when the launcher set them,
    else from git in this checkout, else unknown (None)."""
    if os.environ.get("ORTHRUS_COMMIT"):
        dirty = os.environ.get("ORTHRUS_DIRTY", "").strip().lower()
        if dirty not in ("true", "false", "1", "0", ""):
            raise ValueError(f"ORTHRUS_DIRTY={dirty!r}: set it to true or false (is the launching tree dirty?)")
        return {
            "commit": os.environ["ORTHRUS_COMMIT"],
            "dirty": dirty in ("true", "1") if dirty else None,
            "source": "env (ORTHRUS_COMMIT/ORTHRUS_DIRTY from the launching machine)",
        }

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "source": "git (this checkout)",
        }
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "source": "unknown (no .git and no ORTHRUS_COMMIT)"}


def loaded_sources() -> list[Path]:
    """The repository's .py files imported by this process (the entry script included), sorted."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            path = Path(path).resolve()
            if path.is_relative_to(REPO_ROOT) and path.is_file():
                files.add(path)
    return sorted(files)


def source_hash() -> dict:
    """sha256 of the loaded sources (relative path and content of each) and how many files it covers."""
    h = hashlib.sha256()
    files = loaded_sources()
    for path in files:
        h.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {"sha256": h.hexdigest(), "files": len(files)}


def device_name(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line(argv: list[str] | None = None) -> str:
    """The command as it ran, reproducible from the repo root: `python -m scripts.x ...` for a module run
    (whose sys.argv[0] is the module's absolute file path), else the script path relative to the root."""
    if argv is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
        argv = sys.argv
    argv = list(argv)
    if argv and Path(argv[0]).is_absolute() and Path(argv[0]).resolve().is_relative_to(REPO_ROOT):
        argv[0] = str(Path(argv[0]).resolve().relative_to(REPO_ROOT))
    return shlex.join(["python", *argv])


def training_overrides(diffusion: str | None) -> list[str] | None:
    """The Hydra overrides of the train.py run whose final view `diffusion` is (<run>/diffusion_view, or a
    file in it): <run>/.hydra/overrides.yaml, which tells the arms of a sweep apart (e.g. speed=fast). It is
    the run's latest train.py invocation: a resumed run lists resume=<run> and the keys given on top. None
    for a view from elsewhere (a hub name, a checkpoints/step_N folder)."""
    view = Path(diffusion) if diffusion else None
    if view is None or not view.exists():  # a hub name, or nothing: no run folder to read
        return None
    saved = (view if view.is_dir() else view.parent).parent / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(saved.read_text())] if saved.is_file() else None


def provenance(device: str | torch.device = "cpu", command: list[str] | None = None) -> dict:
    """Computed at the end of a run, so `source_hash` covers every module the run imported."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "command": command_line(command),
        "git": git_state(),
        "source_hash": source_hash(),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
