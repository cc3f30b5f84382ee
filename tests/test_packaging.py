"""The wheel carries migrations and templates, so a plain `pip install` can upgrade and run."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_migrations_and_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, timeout=300)
    [wheel] = tmp_path.glob("maild-*.whl")
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
