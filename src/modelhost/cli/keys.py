"""``modelhost keys …``: API keys in this machine's database (create, list, revoke); a key's
secret is printed once and only its hash is stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelhost.cli.common import actor, out

if TYPE_CHECKING:
    from modelhost.security.keys import KeyStore

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``modelhost keys`` to the command line."""
    app.add_typer(keys_app, name="keys")


def _key_store() -> KeyStore:
    from modelhost.config import Settings
    from modelhost.registry import build_registry
    from modelhost.security.keys import KeyStore

    return KeyStore(build_registry(Settings()).engine)


@keys_app.command("create")
def keys_create(
    principal: Annotated[str, typer.Option(help="Who the key belongs to.")],
    tenant: Annotated[str, typer.Option(help="The principal's tenant.")] = "default",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help=(
                "predict, jobs, models:write, deploy, provenance, features or admin (an admin "
                "of a tenant other than 'system' sees its own tenant only); repeat for more."
            )
        ),
    ] = None,
    expires_days: Annotated[float | None, typer.Option(help="Expire after N days.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(help="Spend per budget period.")] = None,
    description: Annotated[str, typer.Option(help="What the key is for.")] = "",
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from datetime import UTC, datetime, timedelta

    from modelhost.security.keys import NewKey

    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    secret, info = _key_store().create(
        NewKey(
            tenant=tenant,
            principal=principal,
            scopes=scope or ["predict"],
            description=description,
            expires_at=expires,
            rpm=rpm,
            tpm=tpm,
            budget=budget,
        ),
        actor=actor(),
        source="cli",
    )
    out.print(
        f"created key {info.id} for {tenant}/{principal} ({', '.join(info.scopes)})",
        highlight=False,
    )
    out.print(secret, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None) -> None:
    """List keys (never their secrets)."""
    table = Table("id", "tenant", "principal", "scopes", "created", "expires", "revoked")
    for key in _key_store().list_keys(tenant):
        table.add_row(
            key.id,
            key.tenant,
            key.principal,
            ", ".join(key.scopes),
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "",
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (or the whole key).")]) -> None:
    """Revoke a key; servers refuse it within seconds."""
    info = _key_store().revoke(key_id, actor=actor(), source="cli")
    out.print(f"revoked key {info.id} of {info.tenant}/{info.principal}", highlight=False)
