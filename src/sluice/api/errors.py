"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``.

Every error the gateway produces goes through here, so clients (the official ``openai`` client
included) always get the shape they parse, with the right status, and never a stack trace.
"""

from __future__ import annotations

import orjson

# HTTP status -> the ``type`` vLLM and OpenAI put in the body.
_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    499: "ClientClosedRequest",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class ApiError(Exception):
    """An error to send to the client as an OpenAI-style body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | int | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "Error")
        self.param = param
        self.code = code if code is not None else status
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | int | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def sse_error_event(message: str, type: str = "BadGatewayError", code: int = 502) -> bytes:
    """The event that ends a stream whose upstream failed after the first byte (as vLLM does)."""
    return b"data: " + error_body(message, type, None, code) + b"\n\ndata: [DONE]\n\n"
