"""The floor: uvicorn (uvloop + httptools) answering a canned body with no upstream at all.

Run by run.py --floor on the gateway's core, to show how much of the gateway's cost is the
ASGI server itself.  Usage: floor_app.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn

BODY = (Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/dev/null")).read_bytes() or b"{}"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level="warning",
    )
