"""Every script under scripts/ imports cleanly (its names resolve), so a renamed helper breaks CI rather
than the next GPU call. Scripts do their work under `if __name__ == "__main__":` only."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "scripts").glob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports(path):
    assert '__name__ == "__main__"' in path.read_text(), f"{path.name}: put the work under a main guard"
    name = f"_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
