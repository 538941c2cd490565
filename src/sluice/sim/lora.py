"""LoRA adapters loaded into one simulated engine, with vLLM's load/unload rules.

The simulator has no weights: an adapter is a name and the path it was loaded from. What matters
to a router is which names the engine serves (``/v1/models``), how many it may hold
(``max_loras``), and that requests naming an adapter hash their KV blocks apart from the base
model's (the engine puts the adapter name into the block hash).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class LoRAError(Exception):
    """A load/unload request vLLM would reject; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class LoRAAdapter:
    name: str
    path: str
    int_id: int
    created: int = field(default_factory=lambda: int(time.time()))


class LoRARegistry:
    """Adapters by name, at most ``max_loras`` at a time; ids count from 1 as in vLLM."""

    def __init__(self, max_loras: int) -> None:
        if max_loras < 0:
            raise ValueError("max_loras must be >= 0")
        self.max_loras = max_loras
        self._adapters: dict[str, LoRAAdapter] = {}
        self._next_id = 1

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    def adapters(self) -> list[LoRAAdapter]:
        return list(self._adapters.values())

    def load(self, name: str, path: str) -> LoRAAdapter:
        if not name or not path:
            raise LoRAError("Both 'lora_name' and 'lora_path' must be provided.")
        if name in self._adapters:
            raise LoRAError(f"The lora adapter '{name}' has already been loaded.")
        if self.max_loras == 0:
            raise LoRAError("LoRA is not enabled on this server (max_loras is 0).")
        if len(self._adapters) >= self.max_loras:
            loaded = ", ".join(sorted(self._adapters))
            raise LoRAError(
                f"Cannot load LoRA adapter '{name}': max_loras={self.max_loras} adapters are "
                f"already loaded ({loaded}). Unload one first."
            )
        adapter = LoRAAdapter(name=name, path=path, int_id=self._next_id)
        self._next_id += 1
        self._adapters[name] = adapter
        return adapter

    def unload(self, name: str) -> None:
        if not name:
            raise LoRAError("'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self._adapters:
            raise LoRAError(f"The lora adapter '{name}' cannot be found.")
        del self._adapters[name]
