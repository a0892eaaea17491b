"""`modelglue --help`, `--version` and every command's `--help` answer without importing
torch (a newcomer's first command should not wait for seconds of imports)."""
from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [[], ["merge"], ["eval"], ["search"], ["mix"], ["glue"], ["demo"], ["zoo"], ["zoo", "analyze"],
            ["zoo", "build-demo"]]


@pytest.mark.parametrize("args", [c + ["--help"] for c in COMMANDS] + [["--version"]], ids=" ".join)
def test_help_and_version_do_not_import_torch(args):
    probe = ("import sys\nfrom modelglue.cli import main\n"
             "try:\n    main(sys.argv[1:], standalone_mode=False)\nfinally:\n"
             "    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert "Usage" in out.stdout or "version" in out.stdout
