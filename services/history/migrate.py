"""Versioned SQL migrations, applied on start under an advisory lock (two history instances
starting together must not race), recorded in cropcron_migrations."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger("cropcron.history")
LOCK_ID = 0x63726F70  # "crop": any constant shared by every history instance


async def migrate(pool: asyncpg.Pool) -> list[str]:
    files = sorted(
        (f for f in resources.files("services.history").joinpath("migrations").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS cropcron_migrations (name text PRIMARY KEY, applied_at timestamptz "
                "NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM cropcron_migrations")}
            for f in files:
                if f.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f.read_text())
                    await conn.execute("INSERT INTO cropcron_migrations (name) VALUES ($1)", f.name)
                applied.append(f.name)
                log.info("history: applied migration %s", f.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    return applied
