"""`gptstore users|orgs|keys ...` and `gptstore audit`: accounts from the shell.

These commands act on the local store directly, as its administrator (whoever can run
them can read the store's files anyway). `keys create` prints the new key alone on the
last line of standard output, so a script captures it with `| tail -1`.
"""

from __future__ import annotations

import getpass
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table

from gptstore.cli.common import console, id_column, open_catalog, print_json
from gptstore.errors import InvalidRequest

users_app = typer.Typer(help="Users: they own namespaces and hold API keys.",
                        no_args_is_help=True)
orgs_app = typer.Typer(help="Organisations: namespaces shared by members with roles.",
                       no_args_is_help=True)
keys_app = typer.Typer(help="API keys (Authorization: Bearer KEY).", no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
_DURATION_RE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def cli_actor() -> str:
    """Who the audit log names for a CLI command: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextmanager
def _accounts() -> Iterator[tuple[Any, Any]]:
    from gptstore.accounts.store import AccountStore

    with open_catalog() as catalog:
        yield catalog, AccountStore(catalog.db)


def _audit(catalog: Any, action: str, target: str, detail: dict[str, Any] | None = None
           ) -> None:
    from gptstore.accounts.audit import record

    record(catalog.db, cli_actor(), action, target, detail)


def parse_when(text: str, *, what: str) -> datetime:
    """`30d`, `12h`, `90m`, `2w` from now, or an ISO date / date-time (UTC if no zone)."""
    match = _DURATION_RE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return datetime.now(UTC) + timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(f"{what} {text!r}: give a duration such as 30d, 12h, 90m or "
                             "2w, or a date such as 2027-01-31", param=what.lstrip("-")) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- users ------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="User name (also the user's namespace).")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read a password for the web login from standard input "
        "(its first line).")] = False,
    admin: Annotated[bool, typer.Option(
        "--admin", help="A store administrator: sees and may change everything.")] = False,
) -> None:
    """Create a user (and the namespace of its name)."""
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    with _accounts() as (catalog, accounts):
        user = accounts.add_user(name, password=password, admin=admin)
        _audit(catalog, "user-create", name, {"admin": admin})
    console.print(f"created user [bold]{user.name}[/]{' (administrator)' if admin else ''}; "
                  f"give it a key with `gptstore keys create {user.name}`")


@users_app.command("list")
def users_list(as_json: JsonFlag = False) -> None:
    """List users and organisations."""
    with _accounts() as (_, accounts):
        rows = accounts.accounts()
    if as_json:
        print_json([{"name": a.name, "kind": a.kind, "admin": a.is_admin,
                     "created_at": a.created_at.isoformat()} for a in rows])
        return
    table = Table("name", "kind", "admin", "created")
    for a in rows:
        table.add_row(a.name, a.kind, "yes" if a.is_admin else "",
                      a.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


# -- organisations ----------------------------------------------------------------------


def _member(text: str) -> tuple[str, str]:
    user, sep, role = text.partition(":")
    if not sep or not user or role not in ("read", "write", "admin"):
        raise InvalidRequest(f"--member {text!r}: write USER:ROLE with ROLE read, write or "
                             "admin", param="member")
    return user, role


@orgs_app.command("add")
def orgs_add(
    name: Annotated[str, typer.Argument(help="Organisation name (also its namespace).")],
    member: Annotated[list[str] | None, typer.Option(
        "--member", help="USER:ROLE, ROLE read, write or admin (repeatable).")] = None,
) -> None:
    """Create an organisation, or with an existing one, add or change members."""
    from gptstore.errors import NotFound

    members = [_member(m) for m in member or []]
    with _accounts() as (catalog, accounts):
        try:
            existing = accounts.get(name)
        except NotFound:
            existing = None
        if existing is None:
            accounts.add_org(name, members)
            _audit(catalog, "org-create", name, {"members": dict(members)})
            console.print(f"created organisation [bold]{name}[/]")
        else:
            if existing.kind != "org":
                raise InvalidRequest(f"{name} is a user, not an organisation: choose another "
                                     "name for the organisation", param="name")
            for user, role in members:
                accounts.add_member(name, user, role)
                _audit(catalog, "member", name, {"user": user, "role": role})
        current = accounts.members(name)
    for user, role in current:
        console.print(f"  {user}: {role}")


# -- keys -------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Argument(help="The user the key acts as.")],
    scope: Annotated[str, typer.Option(
        help="read (catalog, inference), write (also uploads, jobs) or admin (also "
             "visibility changes).")] = "write",
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "default",
    expires: Annotated[str | None, typer.Option(
        help="Expiry: a duration (30d, 12h, 2w) or a date (2027-01-31); default never."
    )] = None,
) -> None:
    """Create an API key; it is shown once, alone on the last line of output."""
    expires_at = parse_when(expires, what="--expires") if expires else None
    with _accounts() as (catalog, accounts):
        info, key = accounts.create_key(user, scope=scope, name=name, expires_at=expires_at)
        _audit(catalog, "key-create", user, {"key": info.key_id, "scope": scope,
                                             "name": name})
    until = f", expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else ""
    console.print(f"key {info.key_id} for {user} (scope {scope}{until}); it is shown only "
                  "now, store it safely:", highlight=False)
    sys.stdout.flush()
    sys.stdout.write(key + "\n")


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Argument(help="Only this user's keys.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List API keys (ids and states; the keys themselves are not stored)."""
    with _accounts() as (_, accounts):
        keys = accounts.list_keys(user)
    if as_json:
        print_json([k.to_dict() for k in keys])
        return
    table = Table(id_column("id", [k.key_id for k in keys]), "user", "name", "scope", "state",
                  "created", "expires", "last used")
    for k in keys:
        table.add_row(k.key_id, k.user, k.name, k.scope, k.state,
                      f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "",
                      f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id (or the key).")]
                ) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    started = datetime.now(UTC)
    with _accounts() as (catalog, accounts):
        info = accounts.revoke_key(key)
        assert info.revoked_at is not None
        if info.revoked_at < started:  # revoked before: nothing changes
            console.print(f"key {info.key_id} of {info.user} was already revoked "
                          f"({info.revoked_at:%Y-%m-%d %H:%M} UTC)")
            return
        _audit(catalog, "key-revoke", info.user, {"key": info.key_id})
    console.print(f"revoked key {info.key_id} of {info.user}")


# -- audit ------------------------------------------------------------------------------


def audit(
    user: Annotated[str | None, typer.Option("--user", help="Only this actor.")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only events after this: a duration back from now (1d, 12h) or a date.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Who created, published, deleted, downloaded or changed the visibility of what."""
    from gptstore.accounts.audit import entries

    after = None
    if since:
        match = _DURATION_RE.match(since.strip())
        if match:  # a duration counts back from now
            after = datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]:
                                                     int(match.group(1))})
        else:
            after = parse_when(since, what="--since")
    with open_catalog() as catalog:
        rows = entries(catalog.db, actor=user, since=after)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    table = Table("when (UTC)", "who", "action", "what", "detail")
    for r in rows:
        table.add_row(f"{r.at:%Y-%m-%d %H:%M:%S}", r.actor, r.action, r.target,
                      ", ".join(f"{k}={v}" for k, v in (r.detail or {}).items()))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(orgs_app, name="orgs")
    app.add_typer(keys_app, name="keys")
    app.command("audit")(audit)
