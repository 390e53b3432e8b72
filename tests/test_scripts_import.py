"""Every script under scripts/ imports cleanly as a module (its names resolve), so a renamed helper breaks
CI rather than the next run. Scripts do their work under `if __name__ == "__main__":` only."""

import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted(p for p in (Path(__file__).resolve().parent.parent / "scripts").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports(path):
    assert '__name__ == "__main__"' in path.read_text(), f"{path.name}: put the work under a main guard"
    importlib.import_module(f"scripts.{path.stem}")
