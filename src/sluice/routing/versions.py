"""Served model names -> weighted versions (a canary at 5% on its way to 100%).

Clients ask for ``llama``; the fleet serves ``llama-2024-06`` and ``llama-2024-09``. Each request
draws a version by weight. The draw is a hash of the session key (one user sees one version for
the whole conversation, and keeps its prefix cache), else of the request id (a retry stays on its
version), else a low-discrepancy sequence; the splits are exact in the long run either way. A
header (``RequestFacts.version_override``) pins a version for testing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sluice.routing.facts import RequestFacts

_GOLDEN = 0.6180339887498949


@dataclass(frozen=True, slots=True)
class ModelVersion:
    name: str  # the model name the engines serve
    weight: float


@dataclass(frozen=True, slots=True)
class VersionChoice:
    model: str  # what to send upstream and to look endpoints up by
    reason: str


def _unit(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class VersionMap:
    def __init__(self, models: Mapping[str, Sequence[ModelVersion]] | None = None) -> None:
        self.models: dict[str, list[ModelVersion]] = {}
        for served, versions in (models or {}).items():
            kept = [v for v in versions if v.weight > 0]
            if any(v.weight < 0 for v in versions) or not kept:
                raise ValueError(f"model {served!r}: weights must be >= 0 with one above 0")
            self.models[served] = kept
        self._draws = 0

    def resolve(self, facts: RequestFacts) -> VersionChoice:
        versions = self.models.get(facts.model)
        if not versions:
            return VersionChoice(facts.model, "")
        pinned = facts.version_override
        if pinned is not None and any(v.name == pinned for v in versions):
            return VersionChoice(pinned, f"version {pinned} (pinned)")
        if facts.session_key:
            point = _unit("session\x00" + facts.session_key)
        elif facts.request_id:
            point = _unit("request\x00" + facts.request_id)
        else:
            self._draws += 1
            point = (self._draws * _GOLDEN) % 1.0
        total = sum(v.weight for v in versions)
        edge = 0.0
        for v in versions:
            edge += v.weight / total
            if point < edge:
                return VersionChoice(v.name, f"version {v.name} ({v.weight / total:.0%})")
        last = versions[-1]
        return VersionChoice(last.name, f"version {last.name} ({last.weight / total:.0%})")
