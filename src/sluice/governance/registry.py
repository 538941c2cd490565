"""The model registry: what each served model is (version, revision, weights digest), where it
runs (pools) and what it costs. From config; shown in /v1/models and written into audit rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sluice.governance.prices import Prices


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = ""
    revision: str = ""
    weights_digest: str = ""
    context_length: int | None = Field(None, gt=0)
    pools: list[str] = Field(default_factory=list)
    prices: Prices = Field(default_factory=Prices)
    owned_by: str = "sluice"
    created: int = 0

    def openai_object(self) -> dict[str, Any]:
        """A /v1/models entry: OpenAI's fields plus the registry's metadata."""
        obj: dict[str, Any] = {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
        }
        if self.context_length is not None:
            obj["max_model_len"] = self.context_length  # vLLM's name for it
        obj["sluice"] = {
            "version": self.version,
            "revision": self.revision,
            "weights_digest": self.weights_digest,
            "context_length": self.context_length,
            "pools": list(self.pools),
            "prices": self.prices.model_dump(exclude_none=True),
        }
        return obj


class Registry:
    def __init__(self, entries: Iterable[ModelEntry] = ()) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for e in entries:
            if e.name in self._entries:
                raise ValueError(f"model {e.name!r} is registered twice")
            self._entries[e.name] = e

    def get(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def prices(self, name: str) -> Prices | None:
        entry = self._entries.get(name)
        return None if entry is None else entry.prices
