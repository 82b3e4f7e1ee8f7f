"""The layering of the package (pyproject's [tool.importlinter]): lower layers never import higher ones."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import needs

ROOT = Path(__file__).parent.parent


def test_layers_contract_is_kept():
    needs("importlinter")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter's lint-imports is not installed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout
