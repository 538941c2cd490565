"""Who is calling: the result of authentication, whatever the credential."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    user: str
    tier: str
    key_id: str  # API key id, or "jwt:<subject>"
    models: tuple[str, ...] = ()  # empty: every model
    rpm: int | None = None  # per-credential overrides of the configured per-key limits
    tpm: int | None = None
    concurrency: int | None = None
    trusted: bool = False  # may choose its priority with a header

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


class AuthError(Exception):
    """401 (no valid credential) or 403 (valid credential, not allowed)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    @property
    def type(self) -> str:
        return "authentication_error" if self.status == 401 else "permission_error"

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
