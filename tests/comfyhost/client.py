"""A small HTTP client for the ComfyUI server API (stdlib only, so it works before any install)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid


class PromptRejected(AssertionError):
    """POST /prompt answered 400: the server refused the workflow before running it."""

    def __init__(self, status: int, body: dict | str):
        self.status = status
        self.body = body
        super().__init__(f"/prompt answered {status}: {json.dumps(body, indent=1) if isinstance(body, dict) else body}")


class ComfyClient:
    def __init__(self, base_url: str, request_timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.client_id = uuid.uuid4().hex  # ComfyUI tags our prompts with it

    # -- raw HTTP ---------------------------------------------------------------------------------

    def get(self, path: str):
        """GET a path; returns parsed JSON for JSON answers, else the text."""
        return self._request("GET", path)

    def get_bytes(self, path: str) -> bytes:
        """GET a path's raw body (an image from /view, as the browser receives it)."""
        with urllib.request.urlopen(self.base_url + path, timeout=self.request_timeout) as response:
            return response.read()

    def post(self, path: str, payload=None):
        return self._request("POST", path, payload)

    def _request(self, method: str, path: str, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
            return _decode(response.read(), response.headers.get_content_type())

    # -- the API the tests use ----------------------------------------------------------------------

    def object_info(self, node_class: str | None = None) -> dict:
        """Every node's schema, or one node's (then the dict has that one key)."""
        return self.get("/object_info" + (f"/{node_class}" if node_class else ""))

    def queue_prompt(self, api_workflow: dict) -> str:
        """Queues a workflow in API form; returns its prompt_id, or raises PromptRejected with the 400 body."""
        payload = {"prompt": api_workflow, "client_id": self.client_id}
        try:
            return self.post("/prompt", payload)["prompt_id"]
        except urllib.error.HTTPError as error:
            body = _decode(error.read(), error.headers.get_content_type())
            raise PromptRejected(error.code, body) from None

    def history(self, prompt_id: str) -> dict | None:
        """The history entry (status, outputs) once the prompt has finished, else None."""
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.2) -> dict:
        """Waits until the prompt finished (successfully or not) and returns its history entry.

        Check entry["status"]["status_str"] ("success" or "error"); entry["outputs"] maps output node
        ids to what they returned for the UI; an error's details are in entry["status"]["messages"].
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:  # ComfyUI adds the entry only when the prompt is done
                return entry
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s; queue: {self.get('/queue')}")

    def interrupt(self) -> None:
        """Asks the server to stop the prompt that is running now (the UI's Cancel button)."""
        self.post("/interrupt", {})


def _decode(raw: bytes, content_type: str):
    text = raw.decode("utf-8", errors="replace")
    if content_type == "application/json":
        return json.loads(text)
    return text
