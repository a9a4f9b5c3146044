"""The server's websocket messages (progress, executing, execution_interrupted, ...; a preview image as
kind "binary") as the frontend receives them, each with the moment it arrived. aiohttp is ComfyUI's own requirement, so it is there
whenever a server is; it is imported when a listener runs, not at collection (a fresh venv gets the host
requirements only when the first server test installs them)."""

from __future__ import annotations

import asyncio
import json
import threading
import time


class EventListener:
    """`with EventListener(server) as events:` connects as the server's client (its client_id), so the
    messages meant for the prompts that client queues arrive here."""

    def __init__(self, client):
        self.url = client.base_url.replace("http", "ws", 1) + f"/ws?clientId={client.client_id}"
        self.events: list[tuple[float, str, dict]] = []  # (time.monotonic(), type, data)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "EventListener":
        self._thread.start()
        if not self._connected.wait(30):
            raise TimeoutError(f"no websocket connection to {self.url} within 30 s")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)

    def wait_for(self, kind: str, timeout: float, where=lambda data: True) -> tuple[float, dict] | None:
        """(arrival time, data) of the first `kind` message for which `where(data)` holds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for at, k, data in self.events:
                    if k == kind and where(data):
                        return at, data
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def of_kind(self, kind: str, after: float = 0.0) -> list[tuple[float, dict]]:
        """(arrival time, data) of every `kind` message that arrived after `after`, oldest first."""
        with self._lock:
            return [(at, data) for at, k, data in self.events if k == kind and at > after]

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self._listen())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url, heartbeat=30) as ws:
                self._connected.set()
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:  # a preview image: 4-byte event type, then data
                        kind, data = "binary", {"event": int.from_bytes(message.data[:4], "big")}
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        body = json.loads(message.data)
                        kind, data = body.get("type", ""), body.get("data") or {}
                    else:
                        continue
                    with self._lock:
                        self.events.append((time.monotonic(), kind, data))
