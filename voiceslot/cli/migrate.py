"""``voiceslot migrate``: bring both services' database schemas to head, as a step of its
own (the Helm chart's pre-install/pre-upgrade Job) instead of at each server's start.

Each service keeps its own Alembic history (own version table), so both may share one
database; on PostgreSQL each run holds that service's advisory lock (see
``voiceslot.db.upgrade_to_head``), so a Job and a server migrating at once take turns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.engine import make_url

from voiceslot.config import Settings

SERVICES = ("allocator", "synth")


def _target(settings: Settings, service: str) -> tuple[str, Callable[[str], Awaitable[None]]]:
    """The service's database URL and its migrate function (imported here: the services
    never import each other, and only this command needs both)."""
    if service == "allocator":
        from allocator_svc.app import migrate

        return settings.allocator_database_url, migrate
    from synth_svc.app import migrate

    return settings.synth_database_url, migrate


async def run_migrations(
    settings: Settings, services: tuple[str, ...] = SERVICES, *, echo: Callable[[str], None]
) -> None:
    """Migrate each named service in turn; the first failure propagates (non-zero exit,
    so the Job fails and Helm stops the upgrade before any pod runs the new code)."""
    for service in services:
        url, migrate = _target(settings, service)
        where = make_url(url).render_as_string(hide_password=True)
        echo(f"migrating {service} at {where}")
        await migrate(url)
        echo(f"{service}: schema at head")
