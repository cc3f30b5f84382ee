"""The wheel carries migrations and templates, so a plain `pip install` can upgrade and run."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Not copied into the build: local state, what a build leaves behind, and the tests.
TOP_SKIP = {".git", ".venv", ".demo", ".bench", "build", "dist", "tests"}


def skip(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if (top and n in TOP_SKIP) or n == "__pycache__"
            or n.endswith((".egg-info", "_cache"))}


def test_wheel_ships_migrations_and_templates(tmp_path):
    # Built from a copy (the checkout gets no build/ or egg-info) with the build backend
    # of the test environment: no package index is needed.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=skip)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--wheel-dir", str(wheels),
                    str(source)], check=True, timeout=300)
    [wheel] = wheels.glob("maild-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ["maild/cli.py", "maild/migrations/env.py",
                   "maild/migrations/script.py.mako",
                   "maild/migrations/versions/0001_initial_schema.py",
                   "maild/templates/ack.de.txt.j2", "maild/templates/ack.en.html.j2",
                   "maild/templates/_layout.html.j2", "maild/templates/escalated.de.txt.j2",
                   "maild/templates/web/ticket.html.j2", "maild/templates/web/web.css",
                   "maild/web/app.py"]:
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "migrations/", "templates/")) for n in names)
    # Beside the venv: the docs the unit's Documentation= names, and what the README's
    # install steps copy (an install from the wheel alone needs no checkout).
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    for needed in ["share/doc/maild/README.md", "share/doc/maild/docs/operations.md",
                   "share/doc/maild/config.example.toml", "share/maild/systemd/maild.service",
                   "share/maild/systemd/maild.sysusers.conf",
                   "share/maild/systemd/maild.tmpfiles.conf", "share/man/man1/maild.1"]:
        assert needed in data, needed
    unit = (ROOT / "systemd" / "maild.service").read_text()
    for link in re.findall(r"file:///opt/maild/venv/(\S+)", unit):
        assert link in data, link
