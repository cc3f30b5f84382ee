"""The shipped unit is hardened and valid: `systemd-analyze security` and `verify`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "maild.service"


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("systemd-analyze missing in CI (.ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    return tool


def test_unit_exposure_is_at_most_two():
    # The unit scored 9.2 UNSAFE; ops need a service that can reach its mail servers and
    # its folders and nothing else.
    done = subprocess.run([analyze(), "security", "--offline=true", str(UNIT)],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


def test_unit_verifies_clean(tmp_path):
    # The programs are where the README installs them; here they are stand-ins.
    unit = tmp_path / "maild.service"
    unit.write_text(UNIT.read_text().replace("/opt/maild/venv/bin/maild", "/bin/true"))
    done = subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True,
                          timeout=120)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "maild.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_unit_raises_the_open_files_limit():
    # The default soft limit (1,024) is what a flood of connections ran into; maild keeps
    # its listener below the limit it is given, so it is given plenty.
    found = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert found and int(found.group(1)) >= 4096


def test_a_config_error_ends_the_start_for_good():
    # systemd honours RestartPreventExitStatus= only for the main process: an
    # ExecStartPre= that exits 2 (a bad config) would be retried every RestartSec forever.
    # So the unit migrates inside `run --upgrade`, and a start limit backs it up.
    unit = UNIT.read_text()
    keys = [line.split("=", 1) for line in unit.splitlines()
            if "=" in line and not line.startswith("#")]
    values = {key: value for key, value in keys}
    assert "ExecStartPre" not in values
    assert values["ExecStart"].split()[1:] == ["run", "--upgrade"]
    assert values["Restart"] == "on-failure"
    assert "2" in values["RestartPreventExitStatus"].split()
    assert int(values["StartLimitBurst"]) >= 1 and values["StartLimitIntervalSec"] != "0"
