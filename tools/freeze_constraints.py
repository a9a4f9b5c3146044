"""Writes constraints.txt: the exact versions `make test` installs, taken from a venv the full suite passed in.

    .venv/bin/python tools/freeze_constraints.py      # after a green `make test` on newer versions

pip resolves requirements.txt + requirements-test.txt with every package held at the version this venv
has, so the file lists our dependency closure only (not the ComfyUI host's packages, which
tests/comfyhost/host-constraints.txt pins). torch is left out: the Makefile installs it first.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "constraints.txt"
LEFT_OUT = {"torch"}
HEADER = """\
# The newest versions the full suite (`make test`) passed with: `make venv` installs requirements.txt
# under these constraints, so every machine tests the same set. Artists get requirements.txt's ranges.
# Written by tools/freeze_constraints.py from a venv that passed; torch is pinned in the Makefile.
"""


def main() -> None:
    pip = [sys.executable, "-m", "pip"]
    installed = subprocess.run([*pip, "freeze", "--exclude-editable"], check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        held, report = Path(tmp) / "installed.txt", Path(tmp) / "report.json"
        held.write_text(installed)
        subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                        "-r", str(ROOT / "requirements.txt"), "-r", str(ROOT / "requirements-test.txt"),
                        "-c", str(held)], check=True)
        closure = json.loads(report.read_text())["install"]
    pins = sorted((f"{p['metadata']['name']}=={p['metadata']['version']}" for p in closure
                   if p["metadata"]["name"].lower() not in LEFT_OUT), key=str.lower)
    OUT.write_text(HEADER + "\n".join(pins) + "\n")
    print(f"{OUT.name}: {len(pins)} packages")


if __name__ == "__main__":
    main()
