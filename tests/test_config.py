"""The config file: the contract's keys alone run everything; errors name file and key."""

from datetime import date, time
from pathlib import Path

import pytest

from maild import config
from maild.errors import ConfigError

MINIMAL = """
[imap]
host = "imap.example.com"
port = 993
username = "service"
password = "secret"
tls = "ssl"

[smtp]
host = "smtp.example.com"
port = 587
username = "service"
password = "secret"
tls = "starttls"

[database]
url = "sqlite:////var/lib/maild/maild.db"

[support]
address = "Service@Example.com"
name = "Example Support"
public_url = "https://support.example.com"
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "maild.toml"
    path.write_text(body)
    return path


def test_contract_keys_alone_give_documented_defaults(tmp_path):
    # An operator writes only the keys DESIGN.md lists; everything else has its default.
    s = config.load(write(tmp_path, MINIMAL), environ={})
    assert s.imap.folder == "INBOX"
    assert s.imap.processed_folder == "Processed"
    assert s.imap.quarantine_folder == "Quarantine"
    assert s.imap.process_existing is True
    assert s.support.address == "service@example.com"
    assert s.calendar.timezone == "Europe/Berlin"
    assert s.calendar.weekdays == (1, 2, 3, 4, 5)
    assert (s.calendar.open.hour, s.calendar.close.hour) == (9, 16)
    assert s.calendar.first_response_hours == 8
    assert s.http.listen == "127.0.0.1:8025"
    assert s.blob_dir == Path("/var/lib/maild/blobs")


def test_without_database_url_sqlite_goes_to_the_state_directory(tmp_path):
    # No [database] at all: an SQLite file in $STATE_DIRECTORY.
    body = MINIMAL.replace('[database]\nurl = "sqlite:////var/lib/maild/maild.db"\n', "")
    s = config.load(write(tmp_path, body), environ={"STATE_DIRECTORY": str(tmp_path)})
    assert s.paths.state_dir == ""


def test_example_config_is_valid_and_complete():
    # config.example.toml documents every key and loads as it is.
    example = Path(__file__).parent.parent / "config.example.toml"
    s = config.load(example, environ={})
    text = example.read_text()
    for section in type(s).model_fields:
        if section == "source":
            continue
        assert f"[{section}]" in text, section
        model = type(s).model_fields[section].annotation
        if section == "oauth2":  # optional: documented commented out
            model = config.OAuth2Settings
        assert isinstance(model, type), section
        for key in model.model_fields:
            assert f"{key} =" in text or f"# {key} =" in text, f"{section}.{key} undocumented"


def test_unknown_key_is_named_with_file_and_section(tmp_path):
    path = write(tmp_path, MINIMAL.replace('tls = "ssl"', 'tls = "ssl"\nfolderr = "X"'))
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert str(err.value) == f"{path}: [imap] folderr: unknown key"


def test_wrong_value_says_what_is_wrong(tmp_path):
    path = write(tmp_path, MINIMAL.replace('tls = "ssl"', 'tls = "maybe"'))
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert f"{path}: [imap] tls:" in str(err.value)
    assert "'maybe'" in str(err.value)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, MINIMAL.replace('host = "smtp.example.com"', ""))
    with pytest.raises(ConfigError, match=r"\[smtp\] host: missing"):
        config.load(path, environ={})


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[imap\nhost="), environ={})
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml", environ={})


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert config.load(None, environ={"MAILD_CONFIG": str(path)}).source == str(path)
    with pytest.raises(ConfigError, match="--config"):
        config.load(None, environ={})


def test_secrets_from_env_file_and_systemd_credentials(tmp_path):
    # Passwords can stay out of the TOML: environment first, then *_file, then credentials.
    body = MINIMAL.replace('password = "secret"', "", 2)
    body = body.replace('[smtp]\n', f'[smtp]\npassword_file = "{tmp_path / "smtp.pw"}"\n')
    (tmp_path / "smtp.pw").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "imap_password").write_text("from-credential")
    path = write(tmp_path, body)
    s = config.load(path, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert (s.imap.password, s.smtp.password) == ("from-credential", "from-file")
    s = config.load(path, environ={"CREDENTIALS_DIRECTORY": str(creds),
                                   "MAILD_IMAP_PASSWORD": "from-env"})
    assert s.imap.password == "from-env"


def test_unreadable_secret_file_is_named(tmp_path):
    body = MINIMAL.replace('[smtp]\n', '[smtp]\npassword_file = "/nonexistent/pw"\n')
    with pytest.raises(ConfigError, match=r"\[smtp\] password_file: cannot read"):
        config.load(write(tmp_path, body), environ={})


def test_agents_section_is_checked(tmp_path):
    path = write(tmp_path, MINIMAL + '\n[agents]\nteam_address = "Team@Example.com"\n'
                 'members = [{ address = "Max@Example.com", name = "Max" }]\n')
    s = config.load(path, environ={})
    assert s.agents.team_address == "team@example.com"
    assert s.agents.members[0].address == "max@example.com"
    loop = write(tmp_path, MINIMAL + '\n[agents]\nmembers = [{ address = "nope" }]\n')
    with pytest.raises(ConfigError) as err:
        config.load(loop, environ={})
    assert "[agents] members.0.address" in str(err.value)
    us = write(tmp_path, MINIMAL + '\n[agents]\nmembers = [{ address = "service@example.com" }]\n')
    with pytest.raises(ConfigError) as err:
        config.load(us, environ={})
    assert "cannot be an agent" in str(err.value)


def test_calendar_extras_from_toml(tmp_path):
    path = write(tmp_path, MINIMAL + '\n[calendar]\nweekday_hours = { fri = "09:00-13:00" }\n'
                 'closed_days = [2026-12-31]\nhalf_days = { 2026-12-23 = 12:00:00 }\n'
                 'first_response_by_priority = { urgent = 2 }\n')
    s = config.load(path, environ={})
    assert s.calendar.weekday_hours_parsed == {5: (time(9), time(13))}
    assert s.calendar.closed_days == (date(2026, 12, 31),)
    assert s.calendar.half_days == {date(2026, 12, 23): time(12)}
    bad = write(tmp_path, MINIMAL + '\n[calendar]\nweekday_hours = { fri = "13:00-09:00" }\n')
    with pytest.raises(ConfigError) as err:
        config.load(bad, environ={})
    assert "[calendar] weekday_hours" in str(err.value) and "closes before it opens" in str(
        err.value)


def test_config_errors_never_show_a_secret(tmp_path):
    # A mistyped password or a too short signing key: the message names the key and the
    # problem, never the value (it ends up in terminals, journals and tickets).
    body = MINIMAL.replace('password = "secret"', "password = 987654321", 1)
    body += '\n[security]\nsecret_key = "hunter2-hunter2"\n'
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, body), environ={})
    text = str(err.value)
    assert "[imap] password:" in text and "[security] secret_key:" in text
    assert "987654321" not in text and "hunter2" not in text
    assert "at least 32 bytes" in text


def test_cli_prints_config_errors_without_the_secret(tmp_path):
    # `maild check` with a short key from the environment: exit 2, a readable message.
    import os
    import subprocess
    import sys
    path = write(tmp_path, MINIMAL)
    env = {**os.environ, "MAILD_SECURITY_SECRET_KEY": "tiny-key-4711"}
    done = subprocess.run([sys.executable, "-m", "maild", "--config", str(path), "check"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "[security] secret_key: " in done.stderr and "too short" in done.stderr
    assert "tiny-key-4711" not in done.stderr + done.stdout


def test_a_long_signing_key_is_taken(tmp_path):
    key = "k" * 32
    s = config.load(write(tmp_path, MINIMAL + f'\n[security]\nsecret_key = "{key}"\n'),
                    environ={})
    assert s.security.secret_key == key


@pytest.mark.parametrize("section", ["imap", "smtp"])
def test_cleartext_is_refused_for_a_host_that_is_not_loopback(tmp_path, section):
    # tls = "none" would send the password in clear over the network: loopback only.
    tls = 'tls = "ssl"' if section == "imap" else 'tls = "starttls"'
    body = MINIMAL.replace(tls, 'tls = "none"')
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, body), environ={})
    assert f"[{section}]" in str(err.value) and "loopback" in str(err.value)
    host = f'host = "{section}.example.com"'
    for loopback in ("127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST"):
        s = config.load(write(tmp_path, body.replace(host, f'host = "{loopback}"')),
                        environ={})
        assert getattr(s, section).tls == "none"
    for remote in ("10.0.0.1", "128.0.0.1", "localhost.example.com", "::2"):
        with pytest.raises(ConfigError, match="loopback"):
            config.load(write(tmp_path, body.replace(host, f'host = "{remote}"')), environ={})


@pytest.mark.parametrize("key, folder", [
    ("processed_folder", "[Gmail]/All Mail"),
    ("quarantine_folder", "[Gmail]/Spam"),
    ("processed_folder", "[Google Mail]/Trash"),
    ("folder", "[Gmail]/All Mail"),
    ("quarantine_folder", "[gmail]"),
])
def test_gmails_own_folders_are_refused(tmp_path, key, folder):
    # On Gmail, folders are labels and [Gmail]/... are Gmail's own: moving mail there
    # archives, junks or deletes it. The config says so before maild touches anything.
    body = MINIMAL.replace('tls = "ssl"', f'tls = "ssl"\n{key} = "{folder}"')
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, body), environ={})
    assert str(err.value) == (
        f"{tmp_path / 'maild.toml'}: [imap] {key}: a folder of Gmail's own ([Gmail]/..., "
        "[Google Mail]/...): maild never watches or moves mail there; use INBOX or a label "
        f"of your own, e.g. \"Processed\" (got {folder!r})")


def test_labels_of_ones_own_are_taken_on_gmail(tmp_path):
    body = MINIMAL.replace('tls = "ssl"', 'tls = "ssl"\nprocessed_folder = "Support/Done"\n'
                           'quarantine_folder = "Gmail stuff"')
    s = config.load(write(tmp_path, body), environ={})
    assert (s.imap.processed_folder, s.imap.quarantine_folder) == ("Support/Done", "Gmail stuff")


def test_check_never_prints_the_database_password(tmp_path):
    # A database that refuses us or a URL that cannot be parsed: `maild check` says so in
    # one line without the password.
    import os
    import subprocess
    import sys
    for url in ("postgresql+psycopg://maild:pw-s3cr3t-99@127.0.0.1:1/maild",
                "postgresql+psycopg://maild:pw-s3cr3t-99@127.0.0.1:notaport/maild"):
        body = MINIMAL.replace('url = "sqlite:////var/lib/maild/maild.db"', f'url = "{url}"')
        for server in ("imap", "smtp"):  # closed loopback ports: no network needed
            body = body.replace(f'host = "{server}.example.com"', 'host = "127.0.0.1"')
        body = body.replace("port = 993", "port = 1").replace("port = 587", "port = 1")
        done = subprocess.run(
            [sys.executable, "-m", "maild", "--config", str(write(tmp_path, body)), "check"],
            capture_output=True, text=True, env={**os.environ, "MAILD_IMAP_PASSWORD": "x"},
            timeout=120)
        assert "FAIL  database:" in done.stdout, done.stdout + done.stderr
        assert "pw-s3cr3t-99" not in done.stdout + done.stderr


def test_the_config_is_found_by_flag_then_environment_then_the_default_path(tmp_path):
    default = write(tmp_path, MINIMAL)
    other = tmp_path / "other.toml"
    other.write_text(MINIMAL.replace("Example Support", "Other Support"))
    assert config.load(None, {}, default=str(default)).source == str(default)
    assert config.load(None, {"MAILD_CONFIG": str(other)}, default=str(default)).source == (
        str(other))
    assert config.load(str(default), {"MAILD_CONFIG": str(other)},
                       default=str(default)).support.name == "Example Support"
    with pytest.raises(ConfigError, match="pass --config PATH, set MAILD_CONFIG or create "):
        config.load(None, {}, default=str(tmp_path / "missing.toml"))


def test_config_may_come_after_the_command(tmp_path):
    from maild.cli import parser
    assert parser().parse_args(["status", "--config", "a.toml"]).config == "a.toml"
    assert parser().parse_args(["--config", "a.toml", "status"]).config == "a.toml"
    assert parser().parse_args(["tickets", "list", "--config", "b.toml"]).config == "b.toml"
    assert parser().parse_args(["--config", "a.toml", "db", "upgrade", "--config",
                                "b.toml"]).config == "b.toml"  # the later one wins
    assert parser().parse_args(["check"]).config is None


@pytest.mark.parametrize(("mode", "body", "warned"), [
    (0o644, MINIMAL, "[imap] password, [smtp] password"),
    (0o640, MINIMAL, ""),  # root:maild, as the README installs it
    (0o600, MINIMAL, ""),
    (0o644, MINIMAL.replace('password = "secret"\n', 'password_file = "PW"\n'),
     ""),  # only where the secrets are
    (0o644, MINIMAL.replace('password = "secret"\n', "").replace(
        "sqlite:////var/lib/maild/maild.db", "postgresql+psycopg://maild:pw@db/maild"),
     "[database] url"),
])
def test_a_config_with_secrets_readable_by_every_user_is_warned_about(
        tmp_path, mode, body, warned):
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o600)
    path = write(tmp_path, body.replace('"PW"', f'"{tmp_path / "pw"}"'))
    path.chmod(mode)
    config.load(str(path), {})  # valid
    exposure = config.exposure(str(path))
    if warned:
        assert f"holds {warned} and every user may read it (mode {mode:04o})" in exposure
        assert '"secret"' not in exposure and "maild:pw" not in exposure
    else:
        assert exposure == ""
