"""Set up what the peers benchmark needs: its own venv and three system tools.

The peers (dask, celery, dramatiq and their redis client) live in
``bench/peers/.venv`` rather than in the project venv, so their dependencies can
never change what taskmill itself is tested with. Stdlib only, so it runs with any
Python 3.11+:

    python bench/peers/install.py [--force]

Idempotent: pip runs only when ``requirements.txt`` (or the venv's Python) changed
since the last successful install, which a stamp file in the venv records. The
system tools ``redis-server`` (celery's and dramatiq's broker), GNU ``parallel``
and ``xargs`` are installed with apt-get when we are root and it is there;
otherwise the exact command is printed and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"
STAMP = VENV / ".requirements.sha256"
# What each tool is called as a Debian package.
TOOLS = {"redis-server": "redis-server", "parallel": "parallel", "xargs": "findutils"}
IMPORTS = "import dask, distributed, celery, dramatiq, redis"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def requirements_hash() -> str:
    """Changes when the pins or the venv's interpreter change: then pip must run again."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(os.fsencode(os.path.realpath(venv_python())))
    return digest.hexdigest()


def ensure_venv(python: str, force: bool) -> None:
    if force and VENV.exists():
        shutil.rmtree(VENV)
    if not venv_python().exists():
        print(f"creating {VENV}", flush=True)
        subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    wanted = requirements_hash()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        print(f"{VENV.name}: requirements unchanged, pip skipped", flush=True)
    else:
        print(f"installing {REQUIREMENTS.name} into {VENV}", flush=True)
        subprocess.run(
            [str(venv_python()), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
            check=True,
        )
        STAMP.write_text(wanted + "\n")
    # A cheap health check, so a half-broken venv is caught here and not mid-benchmark.
    subprocess.run([str(venv_python()), "-c", IMPORTS], check=True)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def apt_install(packages: list[str]) -> bool:
    """apt-get install; once more after apt-get update if the package lists were stale."""
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env).returncode == 0:
        return True
    subprocess.run(["apt-get", "update"], env=env, check=False)
    return subprocess.run(command, env=env).returncode == 0


def ensure_tools() -> bool:
    missing = missing_tools()
    if not missing:
        print("tools: " + ", ".join(f"{t}={shutil.which(t)}" for t in TOOLS), flush=True)
        return True
    packages = sorted({TOOLS[tool] for tool in missing})
    can_apt = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")
    if can_apt:
        print(f"installing {' '.join(packages)} with apt-get", flush=True)
        if apt_install(packages) and not missing_tools():
            return True
    still = missing_tools()
    print(
        f"missing on PATH: {', '.join(still)}\n"
        f"install them, e.g. on Debian/Ubuntu:\n"
        f"    sudo apt-get install -y {' '.join(sorted({TOOLS[t] for t in still}))}\n"
        f"(macOS: brew install redis parallel)",
        file=sys.stderr,
    )
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="recreate the venv from scratch")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venv (3.11+)")
    args = parser.parse_args()
    if sys.version_info < (3, 11):  # noqa: UP036 - may be started by any python3
        print("Python 3.11+ is needed", file=sys.stderr)
        return 2
    ensure_venv(args.python, args.force)
    return 0 if ensure_tools() else 1


if __name__ == "__main__":
    sys.exit(main())
