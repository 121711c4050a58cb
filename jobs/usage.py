"""Queue `usage`: usage aggregation, fired by cron.

`AggregateDailyUsage` runs at midnight UTC and rolls the previous day's
audit events into one count per action, written as one JSON file per day.
Re-running a day replaces its file: a repeated tick or a manual re-run never
double-counts.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta

from forgejobs import Context, Job
from forgejobs.schedule import cron

from .resources import Resources


class AggregateDailyUsage(Job, queue="usage", schedule=cron("0 0 * * *", tz="UTC")):
    """Count yesterday's audit events per action (or those of `day`)."""

    day: date | None = None  # None: the day before the tick that fired it

    def perform(self, ctx: Context) -> dict[str, int]:
        resources: Resources = ctx.resources
        # The tick, not the time it ran: ticks caught up after downtime each aggregate their own day.
        fired = ctx.scheduled_for or ctx.enqueued_at
        day = self.day or (fired.astimezone(UTC) - timedelta(days=1)).date()
        counts: Counter[str] = Counter()
        if resources.audit_log.exists():
            for line in resources.audit_log.read_text(encoding="utf-8").splitlines():
                event = json.loads(line)
                if datetime.fromisoformat(event["at"]).date() == day:
                    counts[event["action"]] += 1
        out = resources.audit_log.parent / "usage" / f"{day.isoformat()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(sorted(counts.items())), indent=2) + "\n", encoding="utf-8")
        ctx.logger.info("usage for %s: %d events in %s", day, sum(counts.values()), out)
        return dict(counts)
