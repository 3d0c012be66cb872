"""No module of the gateway (nor a dependency it imports) installs a Python audit hook.

An audit hook (``sys.addaudithook``, PEP 578) cannot be removed and runs on every audited
operation of the process: each ``id()``, ``open``, socket and ``compile``. ``filelock`` 3.30+
installs one on import; under it each ``id()`` cost ~0.8 us and a finance-bundle answer ~20 us
more (bench/RESULTS.md, 2026-12-04 22:22). Installing a hook raises the ``sys.addaudithook``
audit event in the hooks already there, so a hook installed first sees every later one."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import importlib, pkgutil, sys
added = []
sys.addaudithook(lambda event, args: added.append(event) if event == "sys.addaudithook" else None)
import service
names = [m.name for m in pkgutil.walk_packages(service.__path__, "service.")]
for name in names:
    importlib.import_module(name)
print(len(names), len(added))
"""


def test_importing_every_gateway_module_installs_no_audit_hook() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    modules, hooks = map(int, out.stdout.split())
    assert modules > 50  # the whole package was walked
    assert hooks == 0
