"""A STAND-IN for a text-generation-inference (TGI) server, for tests. It is not TGI.

It implements the part of TGI's documented HTTP contract that ClinAlign's remote backend
relies on, as the router's OpenAPI describes it
(https://huggingface.github.io/text-generation-inference/) and its ``server.rs`` behaves:

- ``POST /generate`` -> ``GenerateResponse`` JSON; ``POST /generate_stream`` -> Server-Sent
  Events, one ``StreamResponse`` per token (``token: {id, text, logprob, special}``), the last
  one also carrying ``generated_text`` and ``details: {finish_reason, generated_tokens, seed,
  input_length}``; ``POST /`` (the compat route huggingface_hub posts to) dispatches on
  ``stream`` and, like TGI for a text-generation model, defaults ``return_full_text`` to true.
- ``GET /health`` (200, or 503 ``{"error": "unhealthy", "error_type": "healthcheck"}``) and
  ``GET /info`` (model_id, model_sha, max_input_tokens, max_total_tokens, max_stop_sequences...).
- Errors as ``{"error": ..., "error_type": "overloaded" | "validation" | ...}``. Like TGI, a
  request that fails validation or admission on the streaming route still gets HTTP 200 and a
  single SSE error event; on ``/generate`` it gets 422 or 429. A :class:`Fault` can instead
  answer any status before streaming (what the OpenAPI lists, or a proxy in front of TGI does).

Plus a minimal OpenAI-compatible API as vLLM serves it: ``GET /v1/models`` and
``POST /v1/chat/completions`` (streamed ``chat.completion.chunk`` events ending in
``data: [DONE]``, stop strings left out of the text, vLLM's ``stop_reason``, a usage chunk
when ``stream_options.include_usage``).

The "model" answers with the words of a canned clinical sentence, one word per token, then
an end-of-sequence token, honouring ``max_new_tokens`` and stop sequences; it counts one
input token per whitespace-separated word. Every request is recorded (:attr:`TgiStandIn.received`)
so tests can assert what was sent, and a stream whose client went away is counted in
:attr:`TgiStandIn.disconnects`. Tests steer it through :attr:`TgiStandIn.fault`,
``healthy``, ``token_delay_s`` (a slow model) and ``drop_after_tokens`` (a broken stream).

    with TgiStandIn() as tgi:
        settings = GenerationSettings(backend="remote", remote_url=tgi.url)
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = (
    "Start metformin 500 mg twice daily with meals, check renal function and HbA1c in "
    "three months, and review diet and exercise at the next visit."
)
EOS_ID, EOS_TEXT = 2, "</s>"


@dataclass(frozen=True)
class Fault:
    """An error the stand-in answers generation requests with.

    ``in_stream=False``: the HTTP status with a JSON error body, before any event.
    ``in_stream=True``: TGI's own streaming behaviour, HTTP 200 then one SSE error event.
    """

    status: int
    error: str
    error_type: str
    in_stream: bool = False

    @classmethod
    def overloaded(cls, *, in_stream: bool = False) -> Fault:
        return cls(429, "Model is overloaded", "overloaded", in_stream)

    @classmethod
    def validation(cls, message: str, *, in_stream: bool = False) -> Fault:
        return cls(422, f"Input validation error: {message}", "validation", in_stream)

    @classmethod
    def unavailable(cls) -> Fault:
        return cls(503, "unhealthy", "healthcheck")


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Token:
    id: int
    text: str
    special: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": -0.25, "special": self.special}


@dataclass
class _Step:
    token: _Token
    finish: str | None = None  # TGI's: length | eos_token | stop_sequence
    stop: str | None = None  # the stop sequence that ended it
    visible: str = field(default="")  # the text so far, special tokens skipped


class TgiStandIn:
    """A threaded HTTP server on 127.0.0.1; a context manager giving :attr:`url`."""

    def __init__(
        self,
        *,
        model_id: str = "clinalign/standin-policy",
        model_sha: str | None = "5d1e0c3f9a7b2e4d6c8a0b1f3e5d7c9a1b3d5f7e",
        max_input_tokens: int = 1024,
        max_total_tokens: int = 2048,
        max_stop_sequences: int = 4,
        answer: str = ANSWER,
    ) -> None:
        self.model_id = model_id
        self.model_sha = model_sha
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_stop_sequences = max_stop_sequences
        self.answer = answer
        # Test controls, read on every request.
        self.fault: Fault | None = None
        self.healthy = True
        self.token_delay_s = 0.0
        self.drop_after_tokens: int | None = None  # then close the connection mid-stream
        # What happened.
        self.received: list[Received] = []
        self.disconnects = 0
        self.completed_streams = 0
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> TgiStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        standin = self

        class Handler(_Handler):
            owner = standin

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._server is not None, "start the stand-in first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests read ---------------------------------------------------------------

    @property
    def generation_requests(self) -> list[Received]:
        """The POSTs to generation routes, oldest first."""
        with self._lock:
            return [r for r in self.received if r.method == "POST"]

    @property
    def last_body(self) -> Any:
        requests = self.generation_requests
        assert requests, "no generation request received"
        return requests[-1].body

    def wait_for_disconnect(self, timeout: float = 5.0) -> bool:
        return self.disconnected.wait(timeout)

    # -- the "model" -------------------------------------------------------------------

    def input_length(self, inputs: str) -> int:
        return len(inputs.split())

    def steps(self, max_new_tokens: int, stop: list[str]) -> Iterator[_Step]:
        """One step per generated token: the answer's words, then end-of-sequence."""
        words = self.answer.split(" ")
        visible = ""
        for n in range(1, max_new_tokens + 1):
            if n <= len(words):
                token = _Token(1000 + n, words[n - 1] if n == 1 else " " + words[n - 1])
                visible += token.text
            else:
                yield _Step(_Token(EOS_ID, EOS_TEXT, special=True), "eos_token", visible=visible)
                return
            matched = next((s for s in stop if s in visible), None)
            if matched is not None:
                yield _Step(token, "stop_sequence", matched, visible)
                return
            yield _Step(token, "length" if n == max_new_tokens else None, visible=visible)
            if n == max_new_tokens:
                return

    def validate(self, inputs: str, params: dict[str, Any]) -> str | None:
        """TGI's validation (router/src/validation.rs), messages abridged."""
        temperature, top_p, top_k = (
            params.get("temperature"),
            params.get("top_p"),
            params.get("top_k"),
        )
        if temperature is not None and temperature <= 0:
            return "`temperature` must be strictly positive"
        if top_p is not None and not 0.0 < top_p < 1.0:
            return "`top_p` must be > 0.0 and < 1.0"
        if top_k is not None and top_k <= 0:
            return "`top_k` must be strictly positive"
        max_new = params.get("max_new_tokens") or 100
        stop = params.get("stop") or []
        if len(stop) > self.max_stop_sequences:
            return (
                f"`stop` supports up to {self.max_stop_sequences} stop sequences. "
                f"Given: {len(stop)}"
            )
        n = self.input_length(inputs)
        if n > self.max_input_tokens:
            return f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {n}"
        if n + max_new > self.max_total_tokens:
            return (
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {n} `inputs` tokens and {max_new} `max_new_tokens`"
            )
        return None

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_sha": self.model_sha,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": self.max_stop_sequences,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": "stand-in",
            "sha": None,
            "docker_label": None,
        }

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def _on_disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1
        self.disconnected.set()


class _ClientGone(Exception):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing a kept-alive connection is routine; anything else is printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: TgiStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    # -- plumbing ----------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, error: str, error_type: str) -> None:
        self._send_json(status, {"error": error, "error_type": error_type})

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _event(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        chunk = f"data: {data}\n\n".encode()
        try:
            self.wfile.write(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone from exc

    def _end_sse(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone from exc

    def _pace(self) -> None:
        if self.owner.token_delay_s:
            self.owner._stopping.wait(self.owner.token_delay_s)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return raw.decode(errors="replace")

    # -- routes ------------------------------------------------------------------------

    def do_GET(self) -> None:
        owner = self.owner
        owner._record(Received("GET", self.path, dict(self.headers.items()), None))
        if self.path == "/health":
            if owner.healthy:
                self._send_empty_200()
            else:
                self._send_error(503, "unhealthy", "healthcheck")
        elif self.path == "/info":
            self._send_json(200, owner.info())
        elif self.path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": owner.model_id, "object": "model", "created": 0, "owned_by": "tgi"}
                    ],
                },
            )
        else:
            self._send_error(404, f"no route GET {self.path}", "not_found")

    def _send_empty_200(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        owner = self.owner
        body = self._body()
        owner._record(Received("POST", self.path, dict(self.headers.items()), body))
        if not isinstance(body, dict):
            self._send_error(422, "Failed to deserialize the JSON body", "validation")
            return
        routes = {
            "/": lambda: self._tgi(body, bool(body.get("stream")), compat=True),
            "/generate": lambda: self._tgi(body, False, compat=False),
            "/generate_stream": lambda: self._tgi(body, True, compat=False),
            "/v1/chat/completions": lambda: self._chat(body),
        }
        route = routes.get(self.path)
        if route is None:
            self._send_error(404, f"no route POST {self.path}", "not_found")
            return
        fault = owner.fault
        if fault is not None and not fault.in_stream:
            self._send_error(fault.status, fault.error, fault.error_type)
            return
        try:
            route()
        except _ClientGone:
            owner._on_disconnect()
            self.close_connection = True

    def _tgi(self, body: dict[str, Any], stream: bool, *, compat: bool) -> None:
        owner = self.owner
        inputs = str(body.get("inputs", ""))
        params: dict[str, Any] = body.get("parameters") or {}
        fault = owner.fault
        problem = owner.validate(inputs, params)
        error: tuple[int, str, str] | None = None
        if fault is not None:
            error = (fault.status, fault.error, fault.error_type)
        elif problem is not None:
            error = (422, f"Input validation error: {problem}", "validation")
        if error is not None:
            if stream:  # TGI: 200, then the error as the only event
                self._start_sse()
                self._event({"error": error[1], "error_type": error[2]})
                self._end_sse()
            else:
                self._send_error(*error)
            return

        full_text = params.get("return_full_text", compat)
        steps = list(
            owner.steps(int(params.get("max_new_tokens") or 100), params.get("stop") or [])
        )
        last = steps[-1]
        generated = (inputs if full_text else "") + last.visible
        details = {
            "finish_reason": last.finish,
            "generated_tokens": len(steps),
            "seed": params.get("seed") if params.get("do_sample") else None,
        }
        if not stream:
            response: dict[str, Any] = {"generated_text": generated}
            if params.get("details"):
                response["details"] = {**details, "prefill": [], "tokens": []}
            self._send_json(200, [response] if compat else response)
            return

        self._start_sse()
        for index, step in enumerate(steps, start=1):
            self._pace()
            if owner.drop_after_tokens is not None and index > owner.drop_after_tokens:
                self.close_connection = True  # no terminating chunk: a broken stream
                return
            is_last = step is last
            self._event(
                {
                    "index": index,
                    "token": step.token.as_json(),
                    "top_tokens": None,
                    "generated_text": generated if is_last else None,
                    "details": {**details, "input_length": owner.input_length(inputs)}
                    if is_last and params.get("details")
                    else None,
                }
            )
        self._end_sse()
        with owner._lock:
            owner.completed_streams += 1

    def _chat(self, body: dict[str, Any]) -> None:
        owner = self.owner
        if body.get("model") not in (owner.model_id, "tgi"):
            self._send_json(
                404,
                {
                    "object": "error",
                    "message": f"The model `{body.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                },
            )
            return
        if owner.fault is not None:  # in_stream: as TGI's Messages API reports it
            self._start_sse()
            self._event({"error": owner.fault.error, "error_type": owner.fault.error_type})
            self._end_sse()
            return
        messages = body.get("messages") or []
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        steps = list(owner.steps(int(body.get("max_tokens") or 100), stop))
        last = steps[-1]
        finish = "length" if last.finish == "length" else "stop"
        text = last.visible.split(last.stop)[0] if last.stop else last.visible
        usage = {
            "prompt_tokens": owner.input_length(prompt),
            "completion_tokens": len(steps),
            "total_tokens": owner.input_length(prompt) + len(steps),
        }
        head = {"id": "chatcmpl-standin", "created": 0, "model": owner.model_id}
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finish,
                            "stop_reason": last.stop,
                        }
                    ],
                    "usage": usage,
                },
            )
            return

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if finish_reason is not None:
                choice["stop_reason"] = last.stop
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        self._start_sse()
        self._event(chunk({"role": "assistant", "content": ""}))
        sent = ""
        for step in steps:
            self._pace()
            if step.token.special:
                continue
            # vLLM leaves the stop string out of the text.
            upto = text[len(sent) : len(step.visible)]
            sent += upto
            if upto:
                self._event(chunk({"content": upto}))
        self._event(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        self._event("[DONE]")
        self._end_sse()
        with owner._lock:
            owner.completed_streams += 1
