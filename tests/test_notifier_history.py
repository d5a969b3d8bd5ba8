"""Alert history in Postgres: storage is idempotent, the query filters, retention removes old rows."""

from __future__ import annotations

from datetime import timedelta

from services.history import alerts as store
from services.history.migrate import migrate
from services.history.store import create_pool
from shared.events import Alert, DeliveryRecord, utcnow
from shared.queries import AlertsQuery


async def test_store_query_and_retention(db_url: str) -> None:
    pool = await create_pool(db_url)
    try:
        await migrate(pool)
        now = utcnow()
        old = Alert(id="old", level="critical", kind="dead", summary="old", job="a", source="t",
                    at=now - timedelta(days=100))
        new = Alert(id="new", level="warning", kind="missed", summary="new", job="b", source="t", at=now)
        rec = DeliveryRecord(notification_id="n1", channel="mail", status="firing", alert_ids=["new"], attempt=1,
                             outcome="sent", message_id="<n1@cropcron>", at=now)
        await store.store_batch(pool, [old, new], [rec], [])
        await store.store_batch(pool, [old, new], [rec], [])  # redelivered: stored once
        rows = await store.query_alerts(pool, AlertsQuery(limit=10, offset=0))
        assert [r["id"] for r in rows] == ["new", "old"]
        assert rows[0]["deliveries"][0]["message_id"] == "<n1@cropcron>" and rows[1]["deliveries"] == []
        assert [r["id"] for r in await store.query_alerts(pool, AlertsQuery(level="error", limit=10, offset=0))] \
            == ["old"]
        assert [r["id"] for r in await store.query_alerts(pool, AlertsQuery(job="b", limit=10, offset=0))] == ["new"]
        assert await store.cleanup(pool, 90) == {"alerts": 1, "deliveries": 0}
        assert [r["id"] for r in await store.query_alerts(pool, AlertsQuery(limit=10, offset=0))] == ["new"]
    finally:
        await pool.close()
