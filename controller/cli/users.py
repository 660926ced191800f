"""`edgefleet users`, `tokens`, `login` and `logout`: operators' accounts and credentials.

`users create` writes the controller's database directly when no credentials are at hand (or
with `--local`), which is how the first admin is made on the controller's host; everything
else goes through the REST API with the caller's token.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from controller.cli.client import (
    EXIT_API_ERROR,
    EXIT_OK,
    ApiClient,
    ApiError,
    Column,
    ControllerUnreachable,
    UsageError,
    add_api_options,
    ago,
    api_get,
    api_request,
    emit,
    forget_token,
    local_time,
    missing_extra,
    resolve_token,
    store_token,
)

ROLES = ("viewer", "operator", "admin")
USER_COLUMNS: list[Column] = [
    ("user", lambda r: r["name"]),
    ("role", lambda r: r["role"]),
    ("disabled", lambda r: "yes" if r["disabled"] else "no"),
    ("created", lambda r: local_time(r["created"])),
]
TOKEN_COLUMNS: list[Column] = [
    ("id", lambda r: r["id"]),
    ("name", lambda r: r["name"]),
    ("user", lambda r: r["user"]),
    ("role", lambda r: r["role"]),
    ("expires", lambda r: local_time(r["expires"])),
    ("revoked", lambda r: local_time(r["revoked"]) if r["revoked"] else "-"),
    ("last used", lambda r: ago(r["last_used"])),
]


def read_password(args: argparse.Namespace, confirm: bool) -> str:
    """The password from one line of stdin (`--password-stdin`) or a prompt."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != password:
        raise UsageError("the passwords differ")
    return password


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"


def _create_local(args: argparse.Namespace, role: str, password: str) -> int:
    try:
        from controller.auth.audit import AuditRecord, record
        from controller.auth.users import Role, UserError, create_user
        from controller.db import make_engine, session_factory, upgrade_database
        from controller.settings import load_settings
    except ModuleNotFoundError as exc:
        missing_extra("users create --local", "controller", exc)
    settings = load_settings(args.config)
    url = settings.resolved_database_url()
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with session_factory(engine)() as db:
            try:
                user = create_user(db, args.name, password, Role(role))
            except UserError as exc:
                print(f"edgefleet: {exc}", file=sys.stderr)
                return EXIT_API_ERROR
            # written straight to the database, so the audit row is written here too
            record(
                db,
                AuditRecord(
                    actor=f"local:{_os_user()}",
                    method="CLI",
                    action="users create --local",
                    target=f"name={user.name} role={user.role}",
                    status=201,
                    client="local",
                ),
            )
            db.commit()
            row = {
                "name": user.name,
                "role": user.role,
                "disabled": user.disabled,
                "created": user.created,
                "updated": user.updated,
            }
    finally:
        engine.dispose()
    emit(args, row, USER_COLUMNS)
    return EXIT_OK


def cmd_users_create(args: argparse.Namespace) -> int:
    role = "admin" if args.admin else args.role
    password = read_password(args, confirm=not args.password_stdin)
    local = args.local or args.config is not None or resolve_token(args.api) is None
    if local:
        return _create_local(args, role, password)
    body = {"name": args.name, "password": password, "role": role}
    emit(args, api_request(args, "POST", "/api/users", json=body), USER_COLUMNS)
    return EXIT_OK


def cmd_users_list(args: argparse.Namespace) -> int:
    emit(args, api_get(args, "/api/users"), USER_COLUMNS)
    return EXIT_OK


def cmd_users_disable(args: argparse.Namespace) -> int:
    body = {"disabled": not args.enable}
    emit(args, api_request(args, "PATCH", f"/api/users/{args.name}", json=body), USER_COLUMNS)
    return EXIT_OK


def cmd_users_set_role(args: argparse.Namespace) -> int:
    body = {"role": args.role}
    emit(args, api_request(args, "PATCH", f"/api/users/{args.name}", json=body), USER_COLUMNS)
    return EXIT_OK


def cmd_users_bootstrap(args: argparse.Namespace) -> int:
    """Redeem the one-time secret from the controller's log; the new admin's token is kept."""
    password = read_password(args, confirm=not args.password_stdin)
    body = {"secret": args.secret, "name": args.name, "password": password}
    with ApiClient(args.api) as api:
        made = api.request("POST", "/api/auth/bootstrap", json=body)
    path = store_token(args.api, made["token"], token_id=made.get("id"), user=args.name)
    print(f"first admin {args.name!r} created; token kept in {path}", file=sys.stderr)
    return EXIT_OK


def _ask(prompt: str, default: str | None = None) -> str:
    """One answer from the terminal; the default when the answer is empty."""
    shown = f"{prompt} [{default}]: " if default else f"{prompt}: "
    try:
        answer = input(shown).strip()
    except EOFError:
        answer = ""
    if not answer and default is None:
        raise UsageError(f"{prompt} is needed")
    return answer or (default or "")


def cmd_login(args: argparse.Namespace) -> int:
    """Exchange a user name and password for an API token, kept 0600 in the config folder;
    the controller signed in to becomes the default of later commands."""
    api = args.url or args.api
    if args.url is None and args.user is None and sys.stdin.isatty():
        api = _ask("controller URL", api)
    args.api = api.rstrip("/")
    name = args.user or _ask("user")
    password = read_password(args, confirm=False)
    body: dict[str, Any] = {"name": name, "password": password, "token_name": args.token_name}
    if args.ttl_days is not None:
        body["ttl_s"] = args.ttl_days * 86400
    with ApiClient(args.api) as api_client:
        made = api_client.request("POST", "/api/auth/token", json=body)
    path = store_token(args.api, made["token"], token_id=made.get("id"), user=name)
    if args.output == "json":
        emit(args, {k: v for k, v in made.items() if k != "token"}, TOKEN_COLUMNS)
    else:
        print(f"logged in to {args.api} as {name} ({made['role']}); token kept in {path}")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    """Revoke the kept token on the controller (when it answers) and forget it here."""
    api = (args.url or args.api).rstrip("/")
    entry = forget_token(api)
    if entry is None:
        print(f"edgefleet: not logged in to {api}", file=sys.stderr)
        return EXIT_OK
    if entry.get("id") and not args.keep_token:
        try:
            with ApiClient(api, token=entry["token"]) as api_client:
                api_client.request("DELETE", f"/api/tokens/{entry['id']}")
        except (ApiError, ControllerUnreachable) as exc:
            # forgotten here all the same; it ends when it expires or an admin revokes it
            print(f"edgefleet: warning: the token was not revoked: {exc}", file=sys.stderr)
    print(f"logged out of {api}", file=sys.stderr)
    return EXIT_OK


def cmd_tokens_create(args: argparse.Namespace) -> int:
    """A new token; its secret is printed once."""
    body: dict[str, Any] = {"name": args.name}
    if args.role:
        body["role"] = args.role
    if args.ttl_days is not None:
        body["ttl_s"] = args.ttl_days * 86400
    made = api_request(args, "POST", "/api/tokens", json=body)
    emit(args, made, TOKEN_COLUMNS)
    if args.output != "json":  # JSON output carries it in its `token` field
        print(f"token (shown once): {made['token']}")
    return EXIT_OK


def cmd_tokens_list(args: argparse.Namespace) -> int:
    emit(args, api_get(args, "/api/tokens", all=args.all or None), TOKEN_COLUMNS)
    return EXIT_OK


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    emit(args, api_request(args, "DELETE", f"/api/tokens/{args.id}"), TOKEN_COLUMNS)
    return EXIT_OK


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from one stdin line"
    )


def add_users_parsers(subparsers: Any) -> None:
    """`users create|list|disable|set-role|bootstrap`, `tokens create|list|revoke`, `login`,
    `logout`."""
    users = subparsers.add_parser("users", help="operators' accounts")
    users_sub = users.add_subparsers(dest="users_command", required=True)

    create = users_sub.add_parser("create", help="add a user (the first admin: --admin)")
    add_api_options(create)
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, default="viewer")
    create.add_argument("--admin", action="store_true", help="same as --role admin")
    create.add_argument(
        "--local",
        action="store_true",
        help="write the controller's database directly (default when no token is at hand)",
    )
    create.add_argument("--config", type=Path, default=None, help="controller settings file")
    _password_option(create)
    create.set_defaults(func=cmd_users_create)

    listing = users_sub.add_parser("list", help="list users (admin)")
    add_api_options(listing)
    listing.set_defaults(func=cmd_users_list)

    disable = users_sub.add_parser("disable", help="disable a user: its tokens and sessions end")
    add_api_options(disable)
    disable.add_argument("name")
    disable.add_argument("--enable", action="store_true", help="enable the user again")
    disable.set_defaults(func=cmd_users_disable)

    set_role = users_sub.add_parser("set-role", help="change a user's role")
    add_api_options(set_role)
    set_role.add_argument("name")
    set_role.add_argument("role", choices=ROLES)
    set_role.set_defaults(func=cmd_users_set_role)

    bootstrap = users_sub.add_parser(
        "bootstrap", help="create the first admin with the one-time secret from the log"
    )
    add_api_options(bootstrap)
    bootstrap.add_argument("name")
    bootstrap.add_argument("--secret", required=True)
    _password_option(bootstrap)
    bootstrap.set_defaults(func=cmd_users_bootstrap)

    tokens = subparsers.add_parser("tokens", help="API tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    t_create = tokens_sub.add_parser("create", help="a new token (its secret is shown once)")
    add_api_options(t_create)
    t_create.add_argument("name")
    t_create.add_argument("--role", choices=ROLES, default=None, help="default: your role")
    t_create.add_argument("--ttl-days", type=float, default=None)
    t_create.set_defaults(func=cmd_tokens_create)
    t_list = tokens_sub.add_parser("list", help="your tokens (admin: --all)")
    add_api_options(t_list)
    t_list.add_argument("--all", action="store_true")
    t_list.set_defaults(func=cmd_tokens_list)
    t_revoke = tokens_sub.add_parser("revoke", help="revoke a token by id")
    add_api_options(t_revoke)
    t_revoke.add_argument("id")
    t_revoke.set_defaults(func=cmd_tokens_revoke)

    login = subparsers.add_parser(
        "login",
        help="sign in; the token is kept (0600) for later commands",
        description="Sign in with a user name and password; the API token it gets is kept, "
        "readable by you only, in $XDG_CONFIG_HOME/edgefleet/credentials.json (default "
        "~/.config/edgefleet) and used when EDGEFLEET_TOKEN is not set. The controller signed "
        "in to becomes the default when neither --api nor EDGEFLEET_API names one.",
    )
    add_api_options(login)
    login.add_argument("url", nargs="?", default=None, help="controller URL (default: --api)")
    login.add_argument("--user", default=None, help="asked when not given")
    login.add_argument("--token-name", default="cli")
    login.add_argument("--ttl-days", type=float, default=None)
    _password_option(login)
    login.set_defaults(func=cmd_login)

    logout = subparsers.add_parser("logout", help="revoke and forget the kept token")
    add_api_options(logout)
    logout.add_argument("url", nargs="?", default=None, help="controller URL (default: --api)")
    logout.add_argument(
        "--keep-token", action="store_true", help="forget it here without revoking it"
    )
    logout.set_defaults(func=cmd_logout)
