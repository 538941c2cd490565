"""Session affinity: a session key sticks to one endpoint for a while, in bounded memory.

The key comes from a header, the request's ``user`` field or a JWT claim (``facts_builder``).
A binding expires ``ttl`` seconds after its last use; at most ``max_entries`` are kept, the least
recently used going first. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from collections import OrderedDict


class SessionAffinity:
    def __init__(self, ttl: float = 600.0, max_entries: int = 100_000) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self._bound: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._bound)

    def lookup(self, key: str, now: float) -> str | None:
        entry = self._bound.get(key)
        if entry is None:
            return None
        endpoint_id, expires = entry
        if now >= expires:
            del self._bound[key]
            return None
        return endpoint_id

    def bind(self, key: str, endpoint_id: str, now: float) -> None:
        self._bound[key] = (endpoint_id, now + self.ttl)
        self._bound.move_to_end(key)
        # Entries are in order of last use, hence of expiry: expired ones sit at the front.
        while self._bound:
            oldest = next(iter(self._bound.values()))
            if now < oldest[1] and len(self._bound) <= self.max_entries:
                break
            self._bound.popitem(last=False)

    def forget(self, key: str) -> None:
        self._bound.pop(key, None)
