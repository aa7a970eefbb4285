"""Cron maths: checking an expression, time zones, and which slot of a schedule is due."""

from __future__ import annotations

from datetime import datetime, tzinfo

from ._records import ScheduleError

__all__ = ["iso", "latest_due", "next_after", "parse_cron", "slot_stamp", "zone"]


def parse_cron(expr: str) -> str:
    """Check a five-field cron expression (or an alias like ``@daily``); returns it normalised."""
    from croniter import croniter

    text = " ".join(str(expr).split())
    fields = text.split(" ")
    if not text or (len(fields) != 5 and not (len(fields) == 1 and text.startswith("@"))):
        raise ScheduleError(
            f"cron expression {expr!r} has {len(fields) if text else 0} field(s); expected 5: "
            f"'minute hour day-of-month month day-of-week', e.g. '0 2 * * *' (02:00 every day), "
            f"or an alias: @hourly, @daily, @weekly, @monthly, @yearly"
        )
    try:
        croniter(text)
    except (ValueError, KeyError) as exc:
        raise ScheduleError(f"cron expression {expr!r} is not valid: {exc}") from None
    return text


def zone(name: str | None) -> tzinfo:
    """The time zone of a schedule's cron fields: an IANA name, or None for this machine's local time."""
    if name is None:
        from dateutil import tz

        local = tz.tzlocal()
        return local
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: expected an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def next_after(cron: str, ts: float, zone: tzinfo) -> float:
    """The first slot of ``cron`` strictly after ``ts``."""
    from croniter import croniter

    return croniter(cron, datetime.fromtimestamp(ts, zone)).get_next(datetime).timestamp()


def latest_due(cron: str, base: float, now: float, zone: tzinfo) -> float | None:
    """The latest slot in (base, now], or None when none is due yet."""
    from croniter import croniter

    first = next_after(cron, base, zone)
    if first > now:
        return None
    latest = croniter(cron, datetime.fromtimestamp(now, zone)).get_prev(datetime).timestamp()
    following = next_after(cron, latest, zone)
    if following <= now:  # ``now`` sits exactly on a slot: get_prev stepped over it
        latest = following
    return max(latest, first)


def iso(ts: float, zone_name: str | None) -> str:
    """``ts`` in the schedule's time zone, to the second, e.g. ``2026-11-23T02:00:00+00:00``."""
    return datetime.fromtimestamp(ts, zone(zone_name)).isoformat(timespec="seconds")


def slot_stamp(slot: float, zone_name: str | None) -> str:
    """A slot in the schedule's time zone as it appears in log names and Ray submission ids: ``20261123T0200``."""
    return datetime.fromtimestamp(slot, zone(zone_name)).strftime("%Y%m%dT%H%M")
