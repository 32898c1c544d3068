"""Serve a registered model: MLflow's own scoring server, with the guards it lacks in front of it.

    pipeline-serve --model models:/sentiment-classifier@champion --port 5001 [--workers 2]

The app is MLflow's (`mlflow.pyfunc.scoring_server.init`: /invocations, /ping, /health, /version, its
request timeout), run by uvicorn as `mlflow models serve` runs it. `mlflow models serve` works on the
same models; what this command adds, for a server that faces users:

- the body is bounded before it is read or parsed: more than `PIPELINE_MAX_REQUEST_BYTES` (default
  4,000,000) is a 413 naming the limit (MLflow reads any size, and its error repeats the whole request);
- a JSON request has only the keys the served model reads: an unknown top-level key, or a `params` key
  the model's signature does not list, is a 400 naming it (MLflow drops them and answers 200);
- an error carries a message only: no stack trace (MLflow adds one, with the server's file paths, to
  some errors) and not the request's data (MLflow prefixes "Failed to predict data '<all of it>'").

The per-input limits (how many inputs, how many characters, empty texts) are the served model's own
(pipeline/serving/__init__.py), so both servers apply them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pipeline.errors import PipelineError, stage_main

MAX_BYTES = "PIPELINE_MAX_REQUEST_BYTES"
MODEL_DIR = "PIPELINE_SERVE_MODEL_DIR"  # the downloaded model, for each uvicorn worker
TOP_LEVEL_KEYS = ("inputs", "params")  # what the served models' type-hint signatures read
MAX_MESSAGE_CHARS = 2000

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def request_problem(body: bytes, content_type: str, allowed_params: list[str]) -> str | None:
    """What is wrong with a JSON request before MLflow sees it (None: nothing this guard checks)."""
    if content_type != "application/json":
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"the body is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return "the body must be a JSON object with an 'inputs' key"
    unknown = [key for key in payload if key not in TOP_LEVEL_KEYS]
    if unknown:
        return f"unknown key '{unknown[0]}' in the request; a request has {' and '.join(TOP_LEVEL_KEYS)}"
    if "inputs" not in payload:
        return "the request has no 'inputs' key"
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        return "'params' must be a JSON object"
    unknown = [key for key in params if key not in allowed_params]
    if unknown:
        takes = f"this model takes {', '.join(allowed_params)}" if allowed_params else "this model takes none"
        return f"unknown params key '{unknown[0]}'; {takes}"
    return None


def clean_error(body: bytes) -> bytes:
    """An MLflow error body with its message only: no stack trace, not the request's data, bounded."""
    try:
        error = json.loads(body)
    except ValueError:
        return body
    if not isinstance(error, dict):
        return body
    error.pop("stack_trace", None)
    message = str(error.get("message", ""))
    if message.startswith("Failed to predict data '") and "\nError: " in message:
        message = message.split("\nError: ", 1)[1]  # MLflow's prefix repeats every input
    error["message"] = message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + " [...]"
    return json.dumps(error).encode()


async def _respond(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware around MLflow's app for POST /invocations (see the module's doc). Written here
    because MLflow's scoring server has no body limit, no check of unknown keys and no way to leave stack
    traces out of its errors."""

    def __init__(self, app: Any, max_bytes: int, allowed_params: list[str]) -> None:
        self.app, self.max_bytes, self.allowed_params = app, max_bytes, allowed_params

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        too_large = f"the request body is over {self.max_bytes} bytes, the limit ({MAX_BYTES})"
        declared = headers.get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _respond(send, 413, "REQUEST_TOO_LARGE", too_large)
            return
        body, more = b"", True
        while more:  # read up to the limit, never more (a chunked body has no length to check first)
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _respond(send, 413, "REQUEST_TOO_LARGE", too_large)
                return
        content_type = headers.get(b"content-type", b"").decode().split(";")[0].strip().lower()
        problem = request_problem(body, content_type, self.allowed_params)
        if problem is not None:
            await _respond(send, 400, "BAD_REQUEST", problem)
            return
        await self.app(scope, _replay(body, receive), _cleaning(send))


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, once; then what the client sends next (its disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _cleaning(send: Send) -> Send:
    """`send` with every error response's JSON body passed through clean_error."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def cleaned(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = clean_error(b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return cleaned


def create_app() -> RequestGuard:
    """The uvicorn app factory: MLflow's scoring app for the model in MODEL_DIR, guarded."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(os.environ[MODEL_DIR])
    params_schema = model.metadata.get_params_schema()
    allowed = [param.name for param in params_schema.params] if params_schema else []
    return RequestGuard(scoring_server.init(model), int(os.environ.get(MAX_BYTES, 4_000_000)), allowed)


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pipeline-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an MLflow model URI (models:/NAME@champion) or folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5001, help="port (default: 5001)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: 1)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(args.model)  # once, not once per worker
    except mlflow.exceptions.MlflowException as exc:
        raise PipelineError(f"{args.model}: cannot load from MLflow: {str(exc).splitlines()[0]}") from None
    os.environ[MODEL_DIR] = local
    command = [sys.executable, "-m", "uvicorn", "--factory", "pipeline.serving.serve:create_app", "--host", args.host,
               "--port", str(args.port), "--workers", str(args.workers)]  # fmt: skip
    os.execv(sys.executable, command)  # uvicorn in this process's place, as `mlflow models serve` runs it


if __name__ == "__main__":
    main()
