"""Helpers shared by the hostile-user robustness tests (tests/test_*_robustness.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading


def in_threads(fn, n):
    """``[fn(0), ..., fn(n - 1)]``, each called in its own thread; fails the test if any raised."""
    out, errors = [None] * n, []

    def work(i):
        try:
            out[i] = fn(i)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def assert_script_refuses(script: str) -> None:
    """Runs ``script`` (a case that used to hang) in a subprocess with a timeout, so a regression fails instead of
    blocking the suite; it must exit 0 having printed ``refused: <the error>``."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:"), proc.stdout + proc.stderr
