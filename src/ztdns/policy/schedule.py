"""Time windows for rules and policies (``[schedules.NAME]``; docs/policy.md, "Schedules").

A schedule is active on its days between ``start`` and ``end`` (local time of its ``timezone``; an ``end`` at or
before ``start`` runs past midnight into the next day). Start and end are whole minutes, so the answer for one
minute is kept and the hot path pays one comparison per scheduled rule it meets; unscheduled rules pay nothing.

The clock is :data:`now` (``time.time``): ``ztdns explain --at TIME`` and tests replace it.
"""

from __future__ import annotations

import datetime
import time
import zoneinfo
from collections.abc import Callable

from ztdns.config.policy import DAYS, ScheduleConfig

now: Callable[[], float] = time.time


class Schedule:
    __slots__ = ("_days", "_end", "_minute", "_start", "_state", "_zone", "name")

    def __init__(self, name: str, config: ScheduleConfig) -> None:
        self.name = name
        self._days = frozenset(DAYS.index(day) for day in config.days)
        self._start = _minutes(config.start)
        self._end = _minutes(config.end)
        self._zone = zoneinfo.ZoneInfo(config.timezone)
        self._minute = -1  # the minute (Unix time // 60) _state holds the answer for
        self._state = False

    def active(self) -> bool:
        minute = int(now() // 60)
        if minute != self._minute:
            self._state = self.active_at(minute * 60.0)
            self._minute = minute
        return self._state

    def active_at(self, timestamp: float) -> bool:
        local = datetime.datetime.fromtimestamp(timestamp, self._zone)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self._start < self._end:
            return day in self._days and self._start <= minute < self._end
        # Past midnight: the evening part belongs to the listed day, the morning part to the day after it.
        return (day in self._days and minute >= self._start) or ((day - 1) % 7 in self._days and minute < self._end)


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes)
