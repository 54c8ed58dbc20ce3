"""Run Python in a fresh interpreter that cannot import some packages (the installed `mednet_hf`, a DICOM decoder)."""

import os
import subprocess
import sys
import textwrap

_PRELUDE = """
import importlib.abc, os, sys
BLOCKED = {blocked!r}
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is hidden from this interpreter")
        return None
sys.meta_path.insert(0, _Blocker())
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "mednet_hf"))]
"""


def run_python(code: str, blocked: tuple[str, ...], cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    script = _PRELUDE.format(blocked=tuple(blocked)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )
