"""The `maild` command line: run, check, db upgrade, tickets list. Exit codes: 0 ok,
1 a check or operation failed, 2 bad usage or configuration, 141 the reader of the output
went away (a closed pipe, as `| head -1`)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from maild import (
    __version__,
    accounts,
    agents,
    auth,
    blobs,
    config,
    db,
    health,
    imap,
    logs,
    oauth,
    purge,
    reload,
    sla,
    sweeps,
    views,
)
from maild.config import Settings
from maild.errors import ConfigError, MaildError, SmtpDeferred, StorageUnavailable
from maild.mail.parse import person
from maild.models import AddressFlag, Heartbeat, InboundMessage, OutboxMail
from maild.progress import Progress
from maild.smtp import SmtpConnection
from maild.vocab import InboundState, TicketStatus

log = logging.getLogger("maild")

TICKET_STATUSES = tuple(str(s) for s in TicketStatus)
GC_GRACE = 3600.0  # seconds a stored file referenced by nothing is spared (mail in flight)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maild", description="An email-native support desk.")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--version", action="version", version=f"maild {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("run", help="run the daemon in the foreground")
    rp.add_argument("--upgrade", action="store_true",
                    help="first migrate an older database schema (as `db upgrade`; the "
                    "systemd unit runs this, so a config error ends the start with exit 2)")
    ck = sub.add_parser("check", help="check the config and reach IMAP, SMTP and the database")
    ck.add_argument("--json", action="store_true", help="machine-readable output")
    stp = sub.add_parser("status", help="is mail flowing? IMAP, SMTP, the daemon's last "
                         "fetch, backlog, tickets; exit 1 when unhealthy")
    stp.add_argument("--json", action="store_true", help="machine-readable output")
    dbp = sub.add_parser("db", help="database maintenance")
    dbp.add_subparsers(dest="db_command", required=True).add_parser(
        "upgrade", help="migrate the database to the newest schema")
    tp = sub.add_parser("tickets", help="look at tickets")
    tsub = tp.add_subparsers(dest="tickets_command", required=True)
    tl = tsub.add_parser("list", help="list tickets, newest first")
    tl.add_argument("--status", choices=TICKET_STATUSES, metavar="STATUS",
                    help=f"only tickets with this status: {', '.join(TICKET_STATUSES)}")
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    ts = tsub.add_parser("show", help="one ticket: facts, messages, attachments, events")
    ts.add_argument("number", type=_ticket_number, help="ticket number, e.g. 10001 or #10001")
    ts.add_argument("--json", action="store_true", help="machine-readable output")
    tp_ = tsub.add_parser("purge", help="erase a ticket and its personal data (GDPR)")
    tp_.add_argument("number", type=_ticket_number, help="ticket number")
    tp_.add_argument("--yes", action="store_true", help="really erase (no undo)")
    cp = sub.add_parser("customers", help="erase a customer (GDPR)")
    cpp = cp.add_subparsers(dest="customers_command", required=True).add_parser(
        "purge", help="erase every ticket and mail of ADDRESS and cut it out everywhere else")
    cpp.add_argument("address", type=_address, help="the customer's mail address")
    cpp.add_argument("--yes", action="store_true", help="really erase (no undo)")
    bp = sub.add_parser("blobs", help="the store of raw mails and attachments")
    bg = bp.add_subparsers(dest="blobs_command", required=True).add_parser(
        "gc", help="delete stored files no row refers to")
    bg.add_argument("--older-than", type=float, default=GC_GRACE, metavar="SECONDS",
                    help=f"only files unchanged for SECONDS (default {GC_GRACE:.0f}: "
                         "spares mails in flight)")
    trv = tsub.add_parser("revoke-links", help="every link sent for the ticket stops working "
                          "(ticket page, escalation); later mails carry new ones")
    trv.add_argument("number", type=_ticket_number, help="ticket number")
    cbp = sub.add_parser("callbacks", help="the call-back service (escalations)")
    cbr = cbp.add_subparsers(dest="callbacks_command", required=True).add_parser(
        "report", help="escalations with ticket, company, time, phone, cause, billable")
    cbr.add_argument("--month", type=_month, help="only escalations in this month (YYYY-MM, "
                     "in the support time zone)")
    cbf = cbr.add_mutually_exclusive_group()
    cbf.add_argument("--csv", action="store_true", help="CSV for billing")
    cbf.add_argument("--json", action="store_true", help="machine-readable output")
    ap = sub.add_parser("accounts", help="the account book: companies and contacts")
    asub = ap.add_subparsers(dest="accounts_command", required=True)
    ai = asub.add_parser("import", help="upsert contacts and companies from a CSV file")
    ai.add_argument("file", help=f"CSV with columns {', '.join(accounts.COLUMNS)} "
                                 "(email required; aliases and domains separated by ;)")
    ai.add_argument("--dry-run", action="store_true", help="check and count, change nothing")
    al = asub.add_parser("list", help="list contacts with company and addresses")
    al.add_argument("--json", action="store_true", help="machine-readable output")
    gp = sub.add_parser("agents", help="who works tickets by mail")
    gsub = gp.add_subparsers(dest="agents_command", required=True)
    ga = gsub.add_parser("add", help="add an agent (or change its name)")
    ga.add_argument("address", type=_address, help="the agent's own mail address")
    ga.add_argument("--name", default="", help="shown to customers on relayed answers")
    ga.add_argument("--lead", action="store_true", help="team lead (gets escalations)")
    gl = gsub.add_parser("list", help="list agents from the config file and the database")
    gl.add_argument("--json", action="store_true", help="machine-readable output")
    gr = gsub.add_parser("remove", help="remove an agent added with `agents add`")
    gr.add_argument("address", type=_address)
    sp = sub.add_parser("sla", help="the response promise")
    sr = sp.add_subparsers(dest="sla_command", required=True).add_parser(
        "report", help="response times, breaches by week and company, share within promise")
    sr.add_argument("--since", type=_date, help="only tickets opened on or after DATE "
                                                "(YYYY-MM-DD, in the support time zone)")
    sr.add_argument("--json", action="store_true", help="machine-readable output")
    qp = sub.add_parser("quarantine", help="mails maild could not handle")
    qsub = qp.add_subparsers(dest="quarantine_command", required=True)
    ql = qsub.add_parser("list", help="quarantined mails, newest first")
    ql.add_argument("--json", action="store_true", help="machine-readable output")
    qs = qsub.add_parser("show", help="one quarantined mail: reason, error id, headers")
    qs.add_argument("id", type=int, help="the id from `quarantine list`")
    qr = qsub.add_parser("retry", help="process the mail again (after a fix): it goes back "
                                       "into the watched folder with fresh attempts")
    qr.add_argument("id", type=int)
    qe = qsub.add_parser("release", help="done with it by hand: moved to the processed "
                                         "folder, never processed")
    qe.add_argument("id", type=int)
    adp = sub.add_parser("addresses", help="addresses marked bouncing or blocked")
    adsub = adp.add_subparsers(dest="addresses_command", required=True)
    adl = adsub.add_parser("list", help="bouncing and blocked addresses")
    adl.add_argument("--json", action="store_true", help="machine-readable output")
    adc = adsub.add_parser("clear", help="mail may go to ADDRESS again / it is no longer "
                                         "blocked")
    adc.add_argument("address", type=_address)
    bk = sub.add_parser("backup", help="a consistent copy of the database and the stored "
                                       "files, taken while maild runs")
    bk.add_argument("path", help="a new (or empty) folder for the backup")
    bk.add_argument("--json", action="store_true", help="print the manifest as JSON")
    rs = sub.add_parser("restore", help="put a backup in place (stop maild first)")
    rs.add_argument("path", help="the folder `maild backup` wrote")
    rs.add_argument("--force", action="store_true",
                    help="replace a database that already holds tickets or mails")
    auth.add_parser(sub)
    op = sub.add_parser("outbox", help="look at outgoing mail, send a failed one again")
    osub = op.add_subparsers(dest="outbox_command", required=True)
    ol = osub.add_parser("list", help="list outgoing mails, newest first")
    ol.add_argument("--json", action="store_true", help="machine-readable output")
    orr = osub.add_parser("retry", help="send failed mails again once the cause is fixed "
                          "(a 5xx, an outage past give_up_after_hours)")
    which = orr.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID",
                       help="the mails' ids (`maild outbox list`)")
    which.add_argument("--failed", action="store_true", help="every failed mail")
    orr.add_argument("--json", action="store_true", help="machine-readable output")
    cp = sub.add_parser("completion", help="print shell completion for maild (needs no config): "
                        "maild completion bash > /etc/bash_completion.d/maild")
    cp.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    _config_everywhere(p)
    for path in JSON_TOO:
        _leaf(p, path).add_argument("--json", action="store_true",
                                    help="machine-readable output")
    return p


# Commands that report, beside those whose parsers add --json themselves.
JSON_TOO = [("db", "upgrade"), ("restore",), ("accounts", "import"), ("blobs", "gc"),
            ("tickets", "purge"), ("customers", "purge"), ("quarantine", "show")]


def _leaf(p: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        [choices] = [a.choices for a in p._actions
                     if isinstance(a, argparse._SubParsersAction)]
        p = choices[name]
    return p


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """`data` as JSON with --json, else the line(s) `text`."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        print(text)


CONFIG_HELP = (f"config file (default: $MAILD_CONFIG, else {config.DEFAULT_CONFIG}); "
               "before or after the command")


def _config_everywhere(p: argparse.ArgumentParser) -> None:
    """`--config` after the command too (`maild status --config F`): every subcommand
    takes it; given there, it wins over one given before the command."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                sub.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
                _config_everywhere(sub)


def _ticket_number(text: str) -> int:
    try:
        return int(text.strip().lstrip("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a ticket number: {text!r}") from None


def _address(text: str) -> str:
    value = text.strip().lower()
    local, at, domain = value.partition("@")
    if not (local and at and "." in domain) or any(c.isspace() or c in "<>,;" for c in value):
        raise argparse.ArgumentTypeError(f"not a mail address: {text!r}")
    return value


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _month(text: str) -> date:
    try:
        return date.fromisoformat(f"{text.strip()}-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a month (YYYY-MM): {text!r}") from None


BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports of a tool whose reader went away


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that stopped early (`| head -1`) ends it quietly."""
    try:
        code = _command(argv)
        sys.stdout.flush()  # here, while a closed pipe can still be caught
    except BrokenPipeError:
        # What is left in the buffer would fail again at exit: stdout goes nowhere now.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    return code


def _command(argv: Sequence[str] | None) -> int:
    """Parse the arguments, load the config and run the command's handler."""
    args = parser().parse_args(argv)
    if args.command == "completion":  # made from this parser, so it knows every command
        import shtab

        print(shtab.complete(parser(), args.shell))
        return 0
    try:
        settings = config.load(args.config)
    except ConfigError as exc:
        print(f"maild: config error: {exc}".replace("\n", "\nmaild: config error: "),
              file=sys.stderr)
        return 2
    logs.setup(settings.log.level, settings.log.format, logs.secrets_of(settings))
    exposed = config.exposure(settings.source)
    if exposed and args.command == "run":  # into the journal, in the log's format
        log.warning("%s", exposed)
    elif exposed:  # every other command says it on stderr
        print(f"maild: warning: {exposed}", file=sys.stderr)
    handlers: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
        "run": cmd_run, "check": cmd_check, "status": cmd_status, "db": cmd_db_upgrade,
        "tickets": cmd_tickets, "outbox": cmd_outbox, "accounts": cmd_accounts,
        "agents": cmd_agents, "sla": cmd_sla_report, "quarantine": cmd_quarantine,
        "addresses": cmd_addresses, "customers": cmd_customers_purge, "blobs": cmd_blobs_gc,
        "callbacks": cmd_callbacks_report, "backup": cmd_backup, "restore": cmd_restore,
        "auth": auth.cmd_auth,
    }
    try:
        code = handlers[args.command](settings, args)
    except ConfigError as exc:  # one line each (the templates' problems are several)
        print(f"maild: {exc}".replace("\n", "\nmaild: "), file=sys.stderr)
        code = 2
    except MaildError as exc:
        print(f"maild: {exc}", file=sys.stderr)
        code = 1
    if code and args.command not in ("check", "status"):  # they name it on their own
        print(f"maild: database: {_safe_url(settings.database_url)}", file=sys.stderr)
    return code


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from maild.daemon import Daemon

    return asyncio.run(Daemon(settings, upgrade=args.upgrade).run())


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    engine = db.make_engine(settings.database_url)  # creates the SQLite file and its folder
    try:
        before, head = db.schema_status(engine)
        if before != head and sys.stderr.isatty():  # a migration of a big database takes a while
            print(f"migrating the schema from {before or 'nothing'} to {head} …", file=sys.stderr)
        db.upgrade(engine)
        current, _ = db.schema_status(engine)
    finally:
        engine.dispose()
    url = _safe_url(settings.database_url)
    _emit(args, {"database": url, "schema_before": before, "schema": current},
          f"database {url} is at schema {current}")
    return 0


def _safe_url(url: str) -> str:
    """The URL without its password (a malformed one is not shown: it may hold one)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparseable: say so without showing what may hold a password
        return "(a database URL that cannot be parsed)"


def _without_secrets(text: str, settings: Settings) -> str:
    """`text` (a driver's message) with the database URL and its password masked."""
    text = text.replace(settings.database_url, _safe_url(settings.database_url))
    try:
        password = make_url(settings.database_url).password
    except Exception:
        password = None
    return text.replace(str(password), "***") if password else text


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    lines = [(True, f"config: {settings.source}")]
    templates = reload.settings_problems(settings)
    lines += [(False, line) for line in templates]
    if not templates:
        where = settings.paths.templates_dir
        lines.append((True, "templates: compiled" + (f", {where} first" if where else "")))
    if not args.json:  # what is known so far, before the servers are reached
        _print_checks(lines)
    try:
        database = _check_database(settings)
        broken = False
    except ConfigError as exc:  # no driver, a malformed URL: a config error, exit 2
        database = (False, f"database: {_safe_url(settings.database_url)}: {exc}")
        broken = True
    with _login_tokens(settings) as tokens:
        results = [database]
        if tokens is not None:
            results.append(_check_oauth(tokens))
        elif "oauth2" in (settings.imap.auth, settings.smtp.auth):
            results.append((False, "oauth2: the stored tokens cannot be read without the "
                                   "database"))
        results += [_check_imap(settings, tokens), _check_smtp(settings, tokens)]
    code = 2 if broken or templates else 0 if all(ok for ok, _ in results) else 1
    if args.json:
        print(json.dumps({"ok": code == 0, "exit": code, "checks": [
            {"check": line.partition(":")[0], "ok": ok, "detail": line.partition(":")[2].strip()}
            for ok, line in lines + results]}, indent=2))
    else:
        _print_checks(results)
    return code


def _print_checks(lines: list[tuple[bool, str]]) -> None:
    for ok, line in lines:
        print(("ok    " if ok else "FAIL  ") + line)


def _check_database(settings: Settings) -> tuple[bool, str]:
    url = _safe_url(settings.database_url)
    try:
        engine = db.make_engine(settings.database_url, must_exist=True)
    except StorageUnavailable as exc:
        return False, f"database: {url}: {exc}"
    try:
        current, head = db.schema_status(engine)
    except MaildError as exc:
        return False, f"database: {url}: {_without_secrets(str(exc), settings)}"
    except Exception as exc:  # a driver missing or a malformed URL: say it in one line
        detail = _without_secrets(f"{type(exc).__name__}: {exc}", settings)
        return False, f"database: {url}: {detail}".splitlines()[0]
    finally:
        engine.dispose()
    problem = db.schema_problem(current, head)
    if problem:
        return False, f"database: {url}: {problem}"
    return True, f"database: {url} (schema {current})"


@contextmanager
def _login_tokens(settings: Settings) -> Iterator[oauth.Tokens | None]:
    """The OAuth2 tokens of the config's logins (None: passwords only)."""
    if settings.oauth2 is None or "oauth2" not in (settings.imap.auth, settings.smtp.auth):
        yield None
        return
    try:
        engine = db.make_engine(settings.database_url, must_exist=True)
    except MaildError:
        engine = None  # the database line says why; the logins then fail on their own
    if engine is None:
        yield None
        return
    try:
        yield oauth.Tokens(settings.oauth2, db.session_factory(engine),
                           oauth.account_of(settings))
    finally:
        engine.dispose()


def _check_oauth(tokens: oauth.Tokens) -> tuple[bool, str]:
    """A refresh at the authority: proves the grant and the client id and secret."""
    s = tokens.settings
    try:
        bearer = tokens.bearer(fresh=True)
    except MaildError as exc:
        return False, f"oauth2: {exc}"
    return True, (f"oauth2: {tokens.account} ({s.provider}, {tokens.flow} flow): token "
                  f"refreshed, valid until {bearer.expires_at.isoformat(timespec='seconds')}")


def _check_imap(settings: Settings, tokens: oauth.Tokens | None = None) -> tuple[bool, str]:
    s = settings.imap
    try:
        count, missing = imap.probe(s, lambda box: (box.exists, box.missing_folders()),
                                    tokens if s.auth == "oauth2" else None)
    except MaildError as exc:
        return False, f"imap: {exc}"
    later = f"; {', '.join(missing)} will be created at start" if missing else ""
    return True, (f"imap: {s.username}@{s.host}:{s.port} ({s.tls}), folder {s.folder}: "
                  f"{count} mails{later}")


def _check_smtp(settings: Settings, tokens: oauth.Tokens | None = None) -> tuple[bool, str]:
    s = settings.smtp

    async def probe() -> None:
        async with SmtpConnection(s, tokens if s.auth == "oauth2" else None):
            pass

    try:
        asyncio.run(probe())
    except SmtpDeferred as exc:
        return False, f"smtp: {exc}"
    who = f"{s.username}@" if s.username else ""
    return True, f"smtp: {who}{s.host}:{s.port} ({s.tls})"


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    """A transaction on the existing database at this maild's schema (never creates one:
    `db upgrade` does)."""
    engine = db.open_existing(settings.database_url)
    try:
        with db.transaction(db.session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def cmd_tickets(settings: Settings, args: argparse.Namespace) -> int:
    if args.tickets_command == "show":
        return cmd_tickets_show(settings, args)
    if args.tickets_command == "purge":
        return cmd_tickets_purge(settings, args)
    if args.tickets_command == "revoke-links":
        return cmd_tickets_revoke_links(settings, args)
    with _session(settings) as session:
        rows = _local(settings, views.ticket_list(session, args.status))
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for r in views.for_terminal(rows):
        flag = " (automatic)" if r["automatic"] else ""
        flag += " (escalated)" if r["escalated_at"] else ""
        print(f"#{r['number']}  {r['status']:<11} {r['priority']:<7} {r['customer']:<32} "
              f"{str(r['subject'])[:60]}{flag}")
    print(_count(len(rows), "ticket"))
    return 0


def cmd_tickets_revoke_links(settings: Settings, args: argparse.Namespace) -> int:
    from maild import web

    with _session(settings) as session:
        version = web.revoke_links(session, args.number, f"cli:{getpass.getuser()}",
                                   datetime.now(UTC))
    if version is None:
        print(f"maild: no ticket #{args.number}", file=sys.stderr)
        return 1
    print(f"ticket #{args.number}: every link sent so far no longer works (link version "
          f"{version}); the customer gets new links with our next mail")
    return 0


def cmd_callbacks_report(settings: Settings, args: argparse.Namespace) -> int:
    from maild import web

    zone = ZoneInfo(settings.calendar.timezone)
    since = until = None
    if args.month:
        first = args.month
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        since = datetime.combine(first, time(0), tzinfo=zone).astimezone(UTC)
        until = datetime.combine(following, time(0), tzinfo=zone).astimezone(UTC)
    with _session(settings) as session:
        rows = web.callback_report(session, since, until)
    for r in rows:  # times in the support time zone, as on the invoice
        if r["escalated_at"]:
            r["escalated_at"] = datetime.fromisoformat(r["escalated_at"]).astimezone(
                zone).isoformat(timespec="minutes")
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["ticket", "company", "customer", "escalated_at", "phone", "cause",
                      "billable"])
        for r in rows:
            out.writerow([r["ticket"], r["company"], r["customer"], r["escalated_at"],
                          r["phone"], r["cause"], r["billable"]])
        return 0
    for r in rows:
        print(f"#{r['ticket']}  {r['escalated_at']}  {r['phone']:<20} "
              f"{(r['company'] or r['customer'])[:32]:<32} cause {r['cause'] or '-':<11} "
              f"billable {r['billable']}")
    billable = sum(1 for r in rows if r["billable"] == "yes")
    open_ = sum(1 for r in rows if r["billable"] == "open")
    print(f"{_plural(len(rows), 'call-back')}: {billable} billable, {open_} without a cause yet")
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cmd_tickets_show(settings: Settings, args: argparse.Namespace) -> int:
    with _session(settings) as session:
        detail = views.ticket_detail(session, args.number)
    if detail is None:
        print(f"maild: no ticket #{args.number}", file=sys.stderr)
        return 1
    detail = _local(settings, detail)
    if args.json:
        print(json.dumps(detail, indent=2, ensure_ascii=False))
        return 0
    print(_render_ticket(detail))
    return 0


def cmd_tickets_purge(settings: Settings, args: argparse.Namespace) -> int:
    if not args.yes:
        print(f"maild: erasing ticket #{args.number} cannot be undone; "
              "run again with --yes", file=sys.stderr)
        return 1
    with _session(settings) as session:
        result = purge.purge_ticket(session, args.number, _actor(), datetime.now(UTC))
    if result is None:
        print(f"maild: no ticket #{args.number}", file=sys.stderr)
        return 1
    purge.delete_blobs(blobs.FolderStore(settings.blob_dir), result.orphaned_blobs)
    collected = _collect(settings, GC_GRACE)
    files = len(result.orphaned_blobs) + collected
    _emit(args, {"number": result.number, "messages": result.messages,
                 "attachments": result.attachments, "raw_mails": result.raw_mails,
                 "outgoing": result.outgoing, "files_deleted": files},
          f"ticket #{result.number} erased: {result.messages} messages, "
          f"{result.attachments} attachments, {result.raw_mails} raw mails, "
          f"{result.outgoing} outgoing mails, {files} files deleted")
    return 0


def cmd_customers_purge(settings: Settings, args: argparse.Namespace) -> int:
    if not args.yes:
        print(f"maild: erasing everything of {args.address} cannot be undone; "
              "run again with --yes", file=sys.stderr)
        return 1
    store = blobs.FolderStore(settings.blob_dir)
    with _session(settings) as session, Progress("reading stored mails") as progress:
        result = purge.purge_customer(session, store, args.address, _actor(),
                                      datetime.now(UTC), progress)
    purge.delete_blobs(store, result.orphaned_blobs)
    collected = _collect(settings, GC_GRACE)
    numbers = ", ".join(f"#{n}" for n in result.tickets) or "none"
    files = len(result.orphaned_blobs) + collected
    _emit(args, {"address": result.address, "tickets": list(result.tickets),
                 "mails": result.mails, "outgoing": result.outgoing,
                 "redacted": result.redacted, "files_deleted": files},
          f"{result.address} erased: tickets {numbers}, {result.mails} other mails, "
          f"{result.outgoing} outgoing mails, cut out of {result.redacted} places, "
          f"{files} files deleted")
    print("note: the copies in the IMAP folders are not touched; delete them there",
          file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_blobs_gc(settings: Settings, args: argparse.Namespace) -> int:
    count = _collect(settings, max(0.0, args.older_than))
    _emit(args, {"deleted": count, "blob_dir": str(settings.blob_dir)},
          f"{count} unreferenced files deleted from {settings.blob_dir}")
    return 0


def _collect(settings: Settings, grace: float) -> int:
    store = blobs.FolderStore(settings.blob_dir)
    with _session(settings) as session, Progress("looking at stored files") as progress:
        deleted = blobs.collect(session, store,
                                datetime.now(UTC) - timedelta(seconds=grace), progress)
    return len(deleted)


def _render_ticket(raw: dict[str, Any]) -> str:
    d = views.for_terminal(raw)  # a customer's ESC or bidi override stays text
    out = [f"Ticket #{d['number']}  {d['status']}, {d['priority']}"
           f"{', automatic' if d['automatic'] else ''}  {d['subject']}",
           f"Owner:     {d['owner'] or '-'}   cause {d['cause'] or '-'}"
           f"{'   merged into #' + str(d['merged_into']) if d['merged_into'] else ''}",
           f"Customer:  {d['customer_name']} <{d['customer']}>  language {d['language']}",
           f"Opened:    {d['opened_at']}   first response due {d['first_response_due'] or '-'}",
           "Facts:"]
    for fact, value in d["facts"].items():
        shown = ", ".join(value) if isinstance(value, list) else value
        out.append(f"  {fact:18s} {shown}")
    out.append(f"Missing:   {', '.join(d['missing']) or '-'}")
    out.append("Messages:")
    for m in d["messages"]:
        out.append(f"  {m['at']}  {m['direction']:<3} {m['kind'] or '-':<12} {m['author']}  "
                   f"{m['subject']}{'  (automatic)' if m['automatic'] else ''}"
                   f"{'  (internal)' if m['internal'] else ''}")
        for a in m["attachments"]:
            extra = "".join(f", {x}" for x in (a["note"], "" if a["listed"] else "logo") if x)
            out.append(f"      attachment {a['filename']} ({a['content_type']}, "
                       f"{a['size']} bytes{extra})")
        for line in m["text"].strip().split("\n")[:12]:
            out.append(f"      | {line}")
    out.append("Events:")
    for e, plain in zip(d["events"], raw["events"], strict=True):
        detail = views.escape_controls(json.dumps(plain["detail"], ensure_ascii=False))
        out.append(f"  {e['at']}  {e['kind']:<10} by {e['actor']}  {detail}")
    return "\n".join(out)


def cmd_accounts(settings: Settings, args: argparse.Namespace) -> int:
    if args.accounts_command == "list":
        with _session(settings) as session:
            rows = accounts.listing(session)
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
            return 0
        for r in rows:
            also = f" (also {', '.join(r['aliases'])})" if r["aliases"] else ""
            company = f"{r['company']} [{r['customer_number'] or '-'}, {r['tier'] or '-'}]"
            print(f"{r['email']:<36} {r['name']:<24} {company}{also}")
        print(_count(len(rows), "contact"))
        return 0
    try:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"maild: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    return _import_accounts(settings, text, args.file, args.dry_run, args)


def _import_accounts(settings: Settings, text: str, name: str, dry_run: bool,
                     args: argparse.Namespace) -> int:
    engine = db.open_existing(settings.database_url)
    try:
        factory = db.session_factory(engine)
        with factory() as session:
            try:
                with Progress("importing lines") as progress:
                    report = accounts.import_rows(session, accounts.read_csv(text),
                                                  datetime.now(UTC), progress)
            except accounts.LineError as exc:
                if args.json:
                    _emit(args, {"imported": False, "dry_run": dry_run,
                                 "errors": [str(exc)]}, "")
                print(f"maild: {name}: {exc}", file=sys.stderr)
                return 1
            if dry_run:
                session.rollback()
            else:
                session.commit()
    finally:
        engine.dispose()
    for error in report.errors:
        print(f"{name}: {error}", file=sys.stderr)
    verb = "would be" if dry_run else "were"
    _emit(args, {"imported": not dry_run, "dry_run": dry_run, "created": report.created,
                 "updated": report.updated, "unchanged": report.unchanged,
                 "errors": report.errors},
          f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged "
          f"{verb} imported; {len(report.errors)} lines with errors")
    return 1 if report.errors else 0


def cmd_agents(settings: Settings, args: argparse.Namespace) -> int:
    roster = agents.roster_from(settings.agents.members, settings.agents.team_address)
    if args.agents_command == "list":
        with _session(settings) as session:
            rows = [{"address": a.address, "name": a.name, "lead": a.lead, "source": a.source}
                    for a in roster.all(session)]
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
            return 0
        for r in rows:
            lead = " (lead)" if r["lead"] else ""
            print(f"{r['address']:<36} {r['name']:<28} {r['source']}{lead}")
        team = settings.agents.team_address or "(none: notifications go to every agent)"
        print(f"{_count(len(rows), 'agent')}; team address {team}")
        return 0
    configured = {a.address for a in roster.configured}
    if args.address == settings.support.address:
        print("maild: the support address cannot be an agent", file=sys.stderr)
        return 1
    with _session(settings) as session:
        if args.agents_command == "add":
            new = agents.add(session, args.address, args.name, args.lead, datetime.now(UTC))
            print(f"agent {args.address} {'added' if new else 'updated'}")
            if args.address in configured:
                print(f"note: {args.address} is also in {settings.source}; that entry wins")
            return 0
        if not agents.remove(session, args.address):
            where = (f"; it is listed in {settings.source}: remove it there"
                     if args.address in configured else "")
            print(f"maild: no agent {args.address} in the database{where}", file=sys.stderr)
            return 1
    print(f"agent {args.address} removed")
    return 0


def cmd_sla_report(settings: Settings, args: argparse.Namespace) -> int:
    cal = sla.calendar_from(settings.calendar)
    since = (datetime.combine(args.since, time(0), tzinfo=cal.zone).astimezone(UTC)
             if args.since else None)
    with _session(settings) as session:
        r = sweeps.report(session, cal, since, datetime.now(UTC))
    if args.json:
        print(json.dumps(r, indent=2, ensure_ascii=False))
        return 0
    share = (f"{r['share_within_promise'] * 100:.1f} %" if r["share_within_promise"] is not None
             else "-")
    print(f"Tickets{' since ' + str(args.since) if args.since else ''}: {r['tickets']}, "
          f"answered {r['answered']}")
    print(f"First response (business hours): median {_hours(r['response_hours_median'])}, "
          f"p90 {_hours(r['response_hours_p90'])}")
    print(f"Within the promise: {r['within_promise']} of {r['promise_due_or_answered']} "
          f"({share})")
    print(f"Breaches: {r['breaches']}")
    for week, n in r["breaches_by_week"].items():
        print(f"  {week}  {n}")
    if r["breaches_by_company"]:
        print("Breaches by company:")
        for name, n in r["breaches_by_company"].items():
            print(f"  {n:>4}  {name}")
    return 0


def _hours(value: float | None) -> str:
    """A figure of the report; '-' only when there is none (0.0 h is a figure)."""
    return "-" if value is None else f"{value:g}"


def _count(n: int, one: str, many: str = "") -> str:
    """'1 ticket', '2 tickets'."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def cmd_quarantine(settings: Settings, args: argparse.Namespace) -> int:
    store = blobs.FolderStore(settings.blob_dir)
    if args.quarantine_command == "list":
        with _session(settings) as session:
            rows = _local(settings, [_quarantined(r) for r in session.scalars(
                select(InboundMessage).where(InboundMessage.state == InboundState.QUARANTINED)
                .order_by(InboundMessage.id.desc()))])
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
            return 0
        for r in views.for_terminal(rows):
            print(f"{r['id']:>6}  {r['received_at'][:19]}  {r['size']:>9} B  "
                  f"{r['message_id'] or '(no Message-ID)'}\n        {r['reason'][:150]}")
        print(f"{_count(len(rows), 'mail')} in quarantine")
        return 0
    with _session(settings) as session:
        row = session.get(InboundMessage, args.id)
        if row is None or row.state != InboundState.QUARANTINED:
            print(f"maild: no quarantined mail with id {args.id}", file=sys.stderr)
            return 1
        info = _local(settings, _quarantined(row))
        raw = store.get(row.raw_sha256) if row.raw_sha256 and store.exists(
            row.raw_sha256) else b""
    if args.quarantine_command == "show" and args.json:
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        info["headers"] = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")[:200]
        _emit(args, info, "")
        return 0
    if args.quarantine_command == "show":
        shown = views.for_terminal(info)  # what a sender wrote stays text on the terminal
        print(f"Mail {shown['id']} in {shown['mailbox']}, received {shown['received_at']}, "
              f"{shown['size']} bytes, {shown['attempts']} attempts")
        print(f"Message-ID: {shown['message_id'] or '-'}")
        print(f"Reason:     {shown['reason']}")
        if shown["error"]:
            print(f"Error:      {shown['error']}")
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        print("Headers:")
        for line in head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")[:60]:
            print(f"  {views.escape_controls(line, newlines=True)}")
        return 0
    if not raw:
        print(f"maild: the stored copy of mail {args.id} is missing", file=sys.stderr)
        return 1
    to = settings.imap.folder if args.quarantine_command == "retry" else (
        settings.imap.processed_folder)
    how = imap.probe(settings.imap, lambda box: box.take_back(
        settings.imap.quarantine_folder, info["message_id"], raw, to))
    with _session(settings) as session:
        row = session.get_one(InboundMessage, args.id)
        if args.quarantine_command == "retry":
            row.state, row.attempts, row.error = InboundState.FAILED, 0, ""
            row.reason = f"retry requested by {_actor()}: {row.reason}"[:2000]
        else:
            row.state = InboundState.RELEASED
            row.reason = f"released by {_actor()}: {row.reason}"[:2000]
            row.finished_at = datetime.now(UTC)
    verb = "will be processed again" if args.quarantine_command == "retry" else "released"
    print(f"mail {args.id} {verb} ({how})")
    return 0


def _local(settings: Settings, view: Any) -> Any:
    """Every time in `view` in the support calendar's zone (as the mails and pages show
    them), text and JSON alike."""
    return views.in_zone(view, ZoneInfo(settings.calendar.timezone))


def _quarantined(r: InboundMessage) -> dict[str, Any]:
    return {"id": r.id, "mailbox": r.mailbox, "received_at": r.received_at.isoformat(),
            "message_id": r.message_id, "size": r.size, "reason": r.reason,
            "error": r.error, "attempts": r.attempts}


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_addresses(settings: Settings, args: argparse.Namespace) -> int:
    with _session(settings) as session:
        if args.addresses_command == "clear":
            row = session.get(AddressFlag, args.address)
            if row is None or (row.bouncing_since is None and row.blocked_at is None):
                row = session.get(AddressFlag, person(args.address))  # blocks: by person
                print(f"maild: {args.address} is neither bouncing nor blocked",
                      file=sys.stderr)
                return 1
            row.bouncing_since, row.blocked_at, row.updated_at = None, None, datetime.now(UTC)
            print(f"{args.address} cleared: mail goes to it and its mail is answered again")
            return 0
        rows = [{"address": r.address,
                 "bouncing_since": r.bouncing_since.isoformat() if r.bouncing_since else None,
                 "bounce_status": r.bounce_status, "bounce_detail": r.bounce_detail,
                 "blocked_at": r.blocked_at.isoformat() if r.blocked_at else None,
                 "blocked_by": r.blocked_by}
                for r in session.scalars(select(AddressFlag).order_by(AddressFlag.address))
                if r.bouncing_since or r.blocked_at]
        rows = _local(settings, rows)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for r in rows:
        what = []
        if r["bouncing_since"]:
            what.append(f"bouncing since {r['bouncing_since'][:16]} ({r['bounce_status']})")
        if r["blocked_at"]:
            what.append(f"blocked by {r['blocked_by']}")
        print(f"{r['address']:<40} {'; '.join(what)}")
    print(_count(len(rows), "address", "addresses"))
    return 0


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    if args.outbox_command == "retry":
        return cmd_outbox_retry(settings, args)
    with _session(settings) as session:
        mails = session.scalars(select(OutboxMail).order_by(OutboxMail.id.desc())).all()
        total = session.scalar(select(func.count(OutboxMail.id)))
        rows = [{"id": m.id, "message_id": m.message_id, "kind": m.kind, "to": m.recipients,
                 "state": m.state, "attempts": m.attempts, "last_error": m.last_error}
                for m in mails]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['id']:>6} {r['state']:<8} {r['kind']:<6} {','.join(r['to']):<32} "  # type: ignore[arg-type]
              f"{r['message_id']}{'  ' + str(r['last_error']) if r['last_error'] else ''}")
    print(_count(int(total or 0), "mail"))
    return 0


def cmd_outbox_retry(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when every mail named was queued again (or, with --failed, there was none),
    1 when one could not be."""
    from maild import outbox

    store = blobs.FolderStore(settings.blob_dir)
    engine = db.open_existing(settings.database_url)
    try:
        done = outbox.retry_failed(db.session_factory(engine), datetime.now(UTC),
                                   None if args.failed else list(args.ids), _actor(),
                                   stored=store.exists)
    finally:
        engine.dispose()
    queued = [r for r in done if r.queued]
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in done], indent=2))
    else:
        for r in done:
            to = ",".join(r.recipients)
            print(f"mail {r.id} to {to} queued to be sent again" if r.queued
                  else f"maild: mail {r.id}{' to ' + to if to else ''} not queued: {r.why}",
                  file=sys.stdout if r.queued else sys.stderr)
        print(f"{_count(len(queued), 'mail')} queued again; the daemon sends "
              "within half a minute")
    return 0 if len(queued) == len(done) else 1


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    from maild import backup

    with Progress("copying stored files") as progress:
        m = backup.backup(settings, Path(args.path), datetime.now(UTC), progress)
    if args.json:
        print(json.dumps(dataclasses.asdict(m), indent=2))
    else:
        print(f"backup of {_safe_url(settings.database_url)} in {args.path}: schema {m.schema}, "
              f"{_counts(m.counts)}, {_count(m.blobs, 'stored file')} ({m.blob_bytes} bytes)")
    if m.missing_blobs:
        print(f"maild: {_count(len(m.missing_blobs), 'stored file')} the database refers to "
              f"could not be copied (gone or damaged; listed in {args.path}/manifest.json)",
              file=sys.stderr)
        return 1
    return 0


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from maild import backup

    with Progress("restoring stored files") as progress:
        r = backup.restore(settings, Path(args.path), force=args.force, progress=progress)
    m = r.manifest
    text = (f"restored the backup of {m.created_at} into {_safe_url(settings.database_url)}: "
            f"{_counts(m.counts)}; {_count(r.blobs, 'stored file')} into {settings.blob_dir}")
    if r.schema_now != r.head:
        text += (f"\nthe database is at schema {r.schema_now}, this maild needs {r.head}: "
                 "run `maild db upgrade` before `maild run` (the unit's `run --upgrade` does)")
    _emit(args, {"backup_created_at": m.created_at,
                 "database": _safe_url(settings.database_url), "counts": m.counts,
                 "stored_files": r.blobs, "blob_dir": str(settings.blob_dir),
                 "schema": r.schema_now, "schema_needed": r.head}, text)
    return 0


def _counts(counts: dict[str, int]) -> str:
    """'12 tickets, 30 inbound mails, 41 outbox mails'."""
    return ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items())


STATUS_TIMEOUT = 10.0  # seconds `maild status` waits for IMAP or SMTP, at most


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Reach IMAP and SMTP (quickly), read the daemon's heartbeat and the counts, judge."""
    now = datetime.now(UTC)
    quick = settings.model_copy(update={
        "imap": settings.imap.model_copy(update={
            "timeout": min(settings.imap.timeout, STATUS_TIMEOUT)}),
        "smtp": settings.smtp.model_copy(update={
            "timeout": min(settings.smtp.timeout, STATUS_TIMEOUT)})})
    with _login_tokens(settings) as tokens:
        (imap_ok, imap_line, inbox) = _status_imap(quick, tokens)
        smtp_ok, smtp_line = _check_smtp(quick, tokens)
    found, beat, db_error = _status_database(settings)
    runtime = health.runtime_of(beat) if beat else health.Runtime(started_at=now)
    report = health.assess(runtime, found, health.schema_head(), db_error, settings.health,
                           now)
    problems = [line for ok, line in ((imap_ok, imap_line), (smtp_ok, smtp_line)) if not ok]
    silent = beat is None or now - beat.beat_at > health.SILENT_AFTER
    if found is not None and silent:
        last = f"last heartbeat {_ago(beat.beat_at, now)}" if beat else "no heartbeat ever"
        problems.append(f"no maild daemon watches mailbox {settings.imap.mailbox_id} "
                        f"({last})")
    problems = list(dict.fromkeys([*problems, *report.problems]))
    body = {**report.body, "status": "ok" if not problems else "unhealthy",
            "problems": problems, "config": settings.source,
            "state_dir": str(settings.state_dir),
            "imap": {"ok": imap_ok, "detail": imap_line, "inbox": inbox},
            "smtp_check": {"ok": smtp_ok, "detail": smtp_line},
            "daemon": _daemon_part(beat, silent)}
    body["database"]["url"] = _safe_url(settings.database_url)
    body = _local(settings, body)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(_status_text(body, now))
    return 1 if problems else 0


def _status_imap(settings: Settings,
                 tokens: oauth.Tokens | None = None) -> tuple[bool, str, int | None]:
    s = settings.imap
    try:
        count = imap.probe(s, lambda box: box.exists, tokens if s.auth == "oauth2" else None)
    except MaildError as exc:
        return False, f"imap: {exc}", None
    return True, f"imap: {s.username}@{s.host}:{s.port} ({s.tls}), folder {s.folder}", count


def _status_database(
    settings: Settings,
) -> tuple[health.Tally | None, Heartbeat | None, str]:
    try:
        engine = db.make_engine(settings.database_url, must_exist=True)
    except StorageUnavailable as exc:
        return None, None, _without_secrets(str(exc), settings)
    try:
        factory = db.session_factory(engine)
        found = health.tally(factory)
        if found.schema != health.schema_head():  # assess() names it; no heartbeats table
            return found, None, ""
        return found, health.heartbeat(factory, settings.imap.mailbox_id), ""
    except MaildError as exc:
        return None, None, _without_secrets(str(exc), settings)
    except Exception as exc:  # e.g. an old schema without the heartbeats table
        return None, None, _without_secrets(f"{type(exc).__name__}: {exc}",
                                            settings).splitlines()[0]
    finally:
        engine.dispose()


def _daemon_part(beat: Heartbeat | None, silent: bool) -> dict[str, Any]:
    if beat is None:
        return {"running": False, "heartbeat_at": None}
    return {"running": not silent, "heartbeat_at": beat.beat_at.isoformat(timespec="seconds"),
            "process": beat.process, "version": beat.version,
            "started_at": beat.started_at.isoformat(timespec="seconds")}


def _ago(when: datetime | str | None, now: datetime) -> str:
    if when is None:
        return "never"
    at = datetime.fromisoformat(when) if isinstance(when, str) else when
    seconds = max(0, round((now - at).total_seconds()))
    span = f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200 \
        else f"{seconds // 3600} h"
    return f"{at.isoformat(timespec='seconds')} ({span} ago)"


def _status_text(b: dict[str, Any], now: datetime) -> str:
    """`maild status` for a person: the verdict first, then one line per part."""
    d, m, daemon = b["database"], b["mailbox"], b["daemon"]
    lines = [f"maild {b['version']}: {'healthy' if b['status'] == 'ok' else 'UNHEALTHY'}",
             f"config      {b['config']}", f"state       {b['state_dir']}",
             f"database    {d['url']}: " + (
                 f"schema {d['schema']}{'' if d['schema_current'] else ' (not current)'}"
                 if d["reachable"] else f"unreachable: {d['error']}"),
             ("ok    " if b["imap"]["ok"] else "FAIL  ") + b["imap"]["detail"],
             ("ok    " if b["smtp_check"]["ok"] else "FAIL  ") + b["smtp_check"]["detail"]]
    if daemon["running"]:
        lines.append(f"daemon      {daemon['process']}, started {daemon['started_at']}, "
                     f"last fetch {_ago(m['last_fetch_at'], now)}")
    else:
        lines.append("daemon      not running (last heartbeat: "
                     f"{_ago(daemon['heartbeat_at'], now)})")
    if "outbox" in b:
        o, t = b["outbox"], b["tickets"]
        inbox = b["imap"]["inbox"]
        lines += [
            f"inbox       {'?' if inbox is None else inbox}, outbox {o['pending']} "
            f"(oldest unsent: {_ago(o['oldest_pending_at'], now)}), "
            f"quarantine {b['quarantine']}, undeliverable {o['failed']}",
            f"tickets     {t['open_total']} open"
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(t['open'].items()))})"
               if t["open"] else "") + f", {t['breached']} breached"]
    lines += [f"problem     {p}" for p in b["problems"]]
    lines += [f"warning     {w}" for w in b["warnings"]]
    return "\n".join(lines)
