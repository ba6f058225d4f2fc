"""POST /v1/completions as a raw ASGI handler: bounded body, checked request, batcher events to JSON or SSE.

A request's choices (n per prompt) are submitted to the batcher together and their events merged as they
come. Streaming sends one server-sent event per decoded token, as soon as the batcher thread delivers it, and
ends with `data: [DONE]`. A task watches the connection for `http.disconnect` the whole time (while queued,
decoding or streaming): when the client goes, every handle is cancelled and the batcher frees the slots at its
next step boundary. The handler is raw ASGI rather than a framework endpoint so the body limit, the
disconnect watch and the stream are under its control with any ASGI server (uvicorn, Ray Serve's proxy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from runtime.batching import RequestHandle, TokenEvent

from .auth import send_error
from .schemas import APIError, CompletionParams, parse_completion_request
from .service import PreparedPrompt, Service
from .streaming import SSE_DONE, SSE_HEADERS, ChoiceText, sse_event

log = logging.getLogger("runtime.serve")


async def read_body(scope, receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client left; 413 past `limit` bytes (checked before reading
    when Content-Length is given, and while reading otherwise)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise APIError(413, f"the request body of {int(value)} bytes exceeds the limit of {limit} bytes "
                                "(--max-body-bytes): send fewer or shorter prompts", code="body_too_large")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body exceeds the limit of {limit} bytes (--max-body-bytes): send "
                                "fewer or shorter prompts", code="body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


@dataclass
class Choice:
    """One completion of one prompt, as its events arrive."""

    index: int
    prompt: PreparedPrompt
    handle: RequestHandle
    text: ChoiceText
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[tuple[tuple[int, float], ...] | None] = field(default_factory=list)  # per token: (id, logprob)
    offsets: list[int] = field(default_factory=list)  # where each token's text starts in the choice's text
    finish_reason: str | None = None
    error: str | None = None
    error_status: int = 500
    last_time: float | None = None
    prompt_sent: bool = False  # streaming: prompt_token_ids / echo already sent

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class CompletionRun:
    """One accepted request: its choices, the events, and the response (JSON or a stream)."""

    def __init__(self, service: Service, params: CompletionParams, prompts: list[PreparedPrompt],
                 handles: list[RequestHandle], arrival: float):
        self.service, self.params, self.prompts, self.arrival = service, params, prompts, arrival
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        stop_ids = frozenset(service.stop_ids(params))
        self.choices = [
            Choice(i, prompts[i // params.n], handle, ChoiceText(service.tokenizer, params.stop, stop_ids))
            for i, handle in enumerate(handles)
        ]
        self.disconnected = False
        self.finished = False
        # Without a tokenizer the token ids are the only output, so they are always returned.
        self.with_ids = params.return_token_ids or service.tokenizer is None

    # ---- events ----------------------------------------------------------------------------------

    def on_event(self, choice: Choice, event: TokenEvent) -> str:
        """Apply one batcher event to its choice; returns the text now safe to send."""
        metrics = self.service.metrics
        out = ""
        if event.token_id is not None:
            token = event.token_id
            choice.offsets.append(choice.text.decoded_length)
            choice.token_ids.append(token)
            choice.logprobs.append(event.logprob)
            choice.top_logprobs.append(event.top_logprobs)
            out = choice.text.feed(token)
            metrics.generated_tokens.inc()
            if choice.last_time is None:
                metrics.ttft.observe(event.time - self.arrival)
            else:
                metrics.itl.observe(event.time - choice.last_time)
            choice.last_time = event.time
            if choice.text.stopped:  # a stop string matched: the batcher frees the slot at its next step
                if event.finish_reason is None:
                    choice.handle.cancel()
                self._finish(choice, "stop")
                return out
        if event.finish_reason is not None:
            reason = event.finish_reason
            if reason == "cancelled" and not self.disconnected:  # only a shutdown without drain cancels
                reason, choice.error_status = "error", 503
                choice.error = "the request was cancelled: the server is shutting down"
            elif reason == "error":
                choice.error = event.error or "the batcher failed without a message"
            out += choice.text.finish()
            self._finish(choice, reason)
        return out

    def _finish(self, choice: Choice, reason: str) -> None:
        choice.finish_reason = reason
        self.service.metrics.completions.inc(1, reason)
        if choice.last_time is not None:
            self.service.metrics.duration.observe(choice.last_time - self.arrival)

    async def events(self):
        """(choice, event) pairs from every choice's handle, in arrival order, until all choices are done.
        A handle that fails (rather than ending with an error event) ends its choice with an error."""
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(choice: Choice) -> None:
            try:
                async for event in choice.handle.aevents():
                    await merged.put((choice, event))
            except Exception as e:
                failure = f"{type(e).__name__}: {e}"
                await merged.put((choice, TokenEvent(None, None, "error", time.perf_counter(), error=failure)))

        tasks = [asyncio.create_task(pump(c)) for c in self.choices]
        try:
            while not all(c.done for c in self.choices):
                choice, event = await merged.get()
                if not choice.done:
                    yield choice, event
        finally:
            for task in tasks:
                task.cancel()

    def cancel_all(self) -> None:
        for choice in self.choices:
            if not choice.done:
                choice.handle.cancel()

    async def watch_disconnect(self, receive) -> None:
        """Cancel every choice when the client disconnects (queued, decoding or mid-stream)."""
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cancels the request (Ray's proxy) instead of reporting a disconnect
            pass
        if not self.finished:
            self.disconnected = True
            self.service.metrics.rejected.inc(1, "client_disconnected")
            self.cancel_all()

    # ---- responses -------------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        """One token's text in logprobs; a piece of a UTF-8 character is `bytes:\\xNN...`, as OpenAI writes it.

        Distinct byte tokens then stay distinct keys of top_logprobs (as U+FFFD they would collapse into one).
        """
        tokenizer = self.service.tokenizer
        if tokenizer is None:
            return f"token_id:{token}"
        try:
            raw = tokenizer.token_bytes(token)
        except ValueError:  # an id the vocabulary does not assign
            return f"token_id:{token}"
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)

    def _prompt_offsets(self, prompt: PreparedPrompt) -> list[int]:
        """Where each prompt token starts in the echoed prompt text, counted as generated tokens' offsets are."""
        if prompt.text is None or self.service.tokenizer is None:
            return [0] * len(prompt.ids)
        decoder, offsets, length = self.service.tokenizer.stream_decoder(), [], 0
        for token in prompt.ids:
            offsets.append(length)
            length += len(decoder.feed(token))
        return offsets

    def _top_dict(self, top: tuple[tuple[int, float], ...] | None, token: int,
                  value: float | None) -> dict[str, float] | None:
        """A position's most likely alternatives by text, most likely first, with the token actually there
        (OpenAI: up to logprobs + 1 entries)."""
        if top is None:
            return None
        entries: dict[str, float] = {}
        for alternative, logprob in (*top, (token, value)):
            entries.setdefault(self._token_text(alternative), logprob)
        return entries

    def _logprobs(self, choice: Choice, start: int = 0, echo_prompt: bool = False) -> dict[str, Any] | None:
        if self.params.logprobs is None:
            return None
        tokens, values, offsets, top = [], [], [], []
        if echo_prompt:  # scored before submission (Service.score); the first token has nothing to condition on
            prompt = choice.prompt
            tokens += [self._token_text(t) for t in prompt.ids]
            scored = list(prompt.logprobs) if prompt.logprobs is not None else [None] * len(prompt.ids)
            values += scored
            offsets += self._prompt_offsets(prompt)
            tops = prompt.top_logprobs or (None,) * len(prompt.ids)
            top += [self._top_dict(tops[i], token, scored[i]) for i, token in enumerate(prompt.ids)]
        prefix = len(choice.prompt.text or "") if self.params.echo else 0
        tokens += [self._token_text(t) for t in choice.token_ids[start:]]
        values += choice.logprobs[start:]
        offsets += [prefix + o for o in choice.offsets[start:]]
        top += [self._top_dict(choice.top_logprobs[i], choice.token_ids[i], choice.logprobs[i])
                for i in range(start, len(choice.token_ids))]
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": top if self.params.logprobs else None,
                "text_offset": offsets}

    def _usage(self) -> dict[str, int]:
        prompt = sum(len(p.ids) for p in self.prompts)
        completion = sum(len(c.token_ids) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _prompt_token_ids(self) -> list[int] | list[list[int]]:
        ids = [list(p.ids) for p in self.prompts]
        return ids if self.params.batched else ids[0]

    def response(self) -> dict[str, Any]:
        choices = []
        for c in self.choices:
            text = (c.prompt.text or "") + c.text.text if self.params.echo else c.text.text
            item = {"index": c.index, "text": text, "logprobs": self._logprobs(c, echo_prompt=self.params.echo),
                    "finish_reason": c.finish_reason}
            if self.with_ids:
                item["token_ids"] = list(c.token_ids)
                item["prompt_token_ids"] = list(c.prompt.ids)
            choices.append(item)
        body = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.service.name,
                "choices": choices, "usage": self._usage()}
        if self.with_ids:
            body["prompt_token_ids"] = self._prompt_token_ids()
        return body

    def _chunk(self, choice: Choice, text: str, start: int, finish: str | None) -> dict[str, Any]:
        item: dict[str, Any] = {"index": choice.index, "text": text, "logprobs": self._logprobs(choice, start),
                                "finish_reason": finish}
        if self.with_ids:
            item["token_ids"] = choice.token_ids[start:]
            if not choice.prompt_sent:
                item["prompt_token_ids"] = list(choice.prompt.ids)
        choice.prompt_sent = True
        chunk = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.service.name,
                 "choices": [item]}
        if self.params.include_usage:  # OpenAI: every chunk has "usage", null but in the last one
            chunk["usage"] = None
        return chunk

    def _error(self) -> APIError | None:
        failed = [c for c in self.choices if c.error is not None]
        if not failed:
            return None
        first = failed[0]
        return APIError(first.error_status, f"completion {first.index} failed: {first.error}", code="engine_error")

    async def respond(self, send) -> None:
        """Wait for every choice, then answer one JSON body (or the first choice's error)."""
        async for choice, event in self.events():
            self.on_event(choice, event)
        if self.disconnected:
            return
        self.finished = True
        error = self._error()
        if error is not None:
            await send_error(send, error)
            return
        body = json.dumps(self.response(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def stream(self, send) -> None:
        """Server-sent events: a chunk per token as it is decoded, then usage (if asked) and [DONE]."""
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

        async def emit(payload: bytes) -> None:
            await send({"type": "http.response.body", "body": payload, "more_body": True})

        if self.params.echo:
            for choice in self.choices:
                chunk = self._chunk(choice, choice.prompt.text or "", 0, None)
                if self.params.logprobs is not None:
                    chunk["choices"][0]["logprobs"] = self._logprobs(choice, len(choice.token_ids), echo_prompt=True)
                await emit(sse_event(chunk))
        async for choice, event in self.events():
            start = len(choice.token_ids)
            text = self.on_event(choice, event)
            if self.disconnected:
                return
            if choice.error is not None:
                self.cancel_all()
                error = self._error()
                await emit(sse_event({**error.body(), "id": self.id}))
                break
            if len(choice.token_ids) > start or text or choice.done:
                await emit(sse_event(self._chunk(choice, text, start, choice.finish_reason)))
        self.finished = True
        if self.params.include_usage:
            await emit(sse_event({"id": self.id, "object": "text_completion", "created": self.created,
                                  "model": self.service.name, "choices": [], "usage": self._usage()}))
        await send({"type": "http.response.body", "body": SSE_DONE, "more_body": False})


class CompletionsEndpoint:
    """The ASGI app of POST /v1/completions."""

    def __init__(self, service: Service):
        self.service = service

    async def _score(self, prompts: list[PreparedPrompt], top: int,
                     handles: list[RequestHandle]) -> list[PreparedPrompt]:
        """Every prompt scored off the event loop; on failure the request's completions are cancelled (500)."""
        try:
            return await asyncio.to_thread(lambda: [self.service.score(p, top) for p in prompts])
        except Exception as e:
            for handle in handles:
                handle.cancel()
            log.error("scoring a prompt for echo + logprobs failed: %s: %s", type(e).__name__, e)
            raise APIError(500, f"scoring the prompt for echo + logprobs failed ({type(e).__name__}: {e}): retry "
                                "without logprobs, or check the server log", code="engine_error") from e

    async def __call__(self, scope, receive, send) -> None:
        arrival = time.perf_counter()
        service = self.service
        try:
            body = await read_body(scope, receive, service.config.max_body_bytes)
            if body is None:
                return
            params = parse_completion_request(body, service.config)
            unavailable = service.unavailable()
            if unavailable is not None:
                raise unavailable
            prompts = service.prepare(params)
            handles = service.submit(params, prompts)  # first: a request refused (429 / 503) is not scored
            if params.echo and params.logprobs is not None:  # the prompt's own log-probabilities are echoed too
                prompts = await self._score(prompts, params.logprobs, handles)
        except APIError as e:
            if e.status in (400, 404, 413):
                service.metrics.rejected.inc(1, "invalid_request")
            elif e.status == 503:
                service.metrics.rejected.inc(1, "unavailable")
            await send_error(send, e)
            return
        run = CompletionRun(service, params, prompts, handles, arrival)
        watcher = asyncio.create_task(run.watch_disconnect(receive))
        try:
            if params.stream:
                await run.stream(send)
            else:
                await run.respond(send)
        except OSError:  # the connection broke while sending
            run.disconnected = True
        finally:
            run.finished = True
            watcher.cancel()
            run.cancel_all()
