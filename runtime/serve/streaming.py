"""Token ids to the text a client sees, one token at a time, and server-sent events.

ChoiceText turns one completion's tokens into text pieces that never split a UTF-8 character, drop the stop
token (eos) as OpenAI does, and cut at the first `stop` string. While the text so far ends with the start of a
stop string, that tail is held back, so a streamed choice never sends text it later has to take back; the
pieces joined are exactly the non-streamed text.
"""

from __future__ import annotations

import json
from typing import Any

from runtime.tokenizer import Tokenizer

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies (nginx) must not buffer the stream
]
SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


class ChoiceText:
    """The text of one completion choice, fed a token at a time.

    `feed` returns the text that is now safe to send; `stopped` turns true when a stop string matched (the
    text is cut before it and the caller should cancel the request). Without a tokenizer there is no text.
    """

    def __init__(self, tokenizer: Tokenizer | None, stops: tuple[str, ...], stop_ids: frozenset[int]):
        self._decoder = tokenizer.stream_decoder() if tokenizer is not None else None
        self._stops, self._stop_ids = stops, stop_ids
        self._pending = ""  # decoded, not yet sent
        self.text = ""  # sent so far
        self.stopped = False

    @property
    def decoded_length(self) -> int:
        """Characters decoded so far, sent or held back (where the next token's text starts)."""
        return len(self.text) + len(self._pending)

    def feed(self, token_id: int) -> str:
        """Add one generated token; return the text to send now (possibly "")."""
        if self._decoder is None or self.stopped or token_id in self._stop_ids:
            return ""
        try:
            self._pending += self._decoder.feed(token_id)
        except ValueError:  # an id past the tokenizer's vocabulary (a padded embedding): no text of its own
            self._pending += "\ufffd"
        return self._release(final=False)

    def finish(self) -> str:
        """The request ended: return whatever is still held back (a partial character becomes U+FFFD)."""
        if self._decoder is None or self.stopped:
            return ""
        self._pending += self._decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = self._pending[:cut], "", True
        else:
            hold = 0 if final else self._held_back()
            out = self._pending[: len(self._pending) - hold]
            self._pending = self._pending[len(self._pending) - hold :]
        self.text += out
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string."""
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), hold, -1):
                if stop.startswith(self._pending[-k:]):
                    hold = k
                    break
        return hold
