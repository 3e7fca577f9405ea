"""When a recording expires, and which key epoch that puts it in.

``expires_at`` = the recorded time + the retention days of the recording's category (the
policy's ``retention_category``), never more than the organisation-wide maximum. A recording's
key epoch is the ISO week in which it expires (``2026-W50``), so every recording of an epoch
expires within the same seven days and the epoch's private key can be destroyed soon after
(crypto-shredding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetentionRule:
    default_days: int = 30
    max_days: int = 365
    categories: Mapping[str, int] = field(default_factory=dict)

    def days_for(self, category: str) -> int:
        return min(self.categories.get(category, self.default_days), self.max_days)

    def expires_at(self, category: str, recorded_at: datetime) -> datetime:
        return recorded_at.astimezone(UTC) + timedelta(days=self.days_for(category))

    @property
    def longest_days(self) -> int:
        """The longest retention any category has now: how far ahead epochs must reach."""
        return min(max([self.default_days, *self.categories.values()]), self.max_days)


def epoch_id(expires_at: datetime) -> str:
    year, week, _ = expires_at.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def epoch_bounds(epoch: str) -> tuple[datetime, datetime]:
    """[Monday 00:00 UTC, next Monday) of an epoch id."""
    year, week = epoch.split("-W")
    start = date.fromisocalendar(int(year), int(week), 1)
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return begin, begin + timedelta(days=7)


def epochs_between(first: datetime, last: datetime) -> list[str]:
    """Every epoch id from the week of ``first`` to the week of ``last``, inclusive."""
    out, at = [], epoch_bounds(epoch_id(first))[0]
    while at <= last:
        out.append(epoch_id(at))
        at += timedelta(days=7)
    return out
