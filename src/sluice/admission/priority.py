"""Request priorities: from the caller's tier, or from a header for trusted callers."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class Priority(IntEnum):
    """Lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BATCH = 4

    @property
    def label(self) -> str:
        return self.name.lower()


DEFAULT_TIER_PRIORITY: dict[str, Priority] = {
    "enterprise": Priority.HIGH,
    "pro": Priority.NORMAL,
    "free": Priority.LOW,
}
HEADER = "x-sluice-priority"


class PriorityError(ValueError):
    pass


def parse(name: str) -> Priority:
    try:
        return Priority[name.strip().upper()]
    except KeyError:
        known = ", ".join(p.label for p in Priority)
        raise PriorityError(f"unknown priority {name!r}; use one of {known}") from None


def resolve(
    tier: str,
    header: str | None,
    trusted: bool,
    tier_priority: Mapping[str, Priority] = DEFAULT_TIER_PRIORITY,
) -> Priority:
    """The header wins for trusted callers; everyone else gets their tier's priority."""
    if header and trusted:
        return parse(header)
    return tier_priority.get(tier, Priority.LOW)
