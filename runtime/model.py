"""The embeddable API: `runtime.load(folder)` returns a Model that generates, streams, classifies and scores.

Modelled on onnxruntime-genai's small surface (Model, Tokenizer, options as one object). A loaded
Model holds only immutable state (backend, manifest, tokenizer); every call builds its own decoder
and cache, so one Model serves many threads. The backend is ONNX Runtime (any provider) or, for an
engine folder, native TensorRT. Shape legend: B batch, T tokens.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decoding import generate
from .engine_manifest import ENGINE_MANIFEST
from .manifest import CACHE_KINDS, PAST_PREFIX, Manifest, past_name
from .onnx_decoder import OnnxRuntimeBackend
from .options import GenerationOptions
from .providers import DEVICE_OF, check_contract, create_session
from .tokenizer import Tokenizer, TokenizerNotFoundError

GENERATING_HEADS = ("lm",)
LOGITS_TO_KEEP = "logits_to_keep"  # optional input of fused LM graphs: logits for the last k positions only


@dataclass
class Classification:
    """classify() output: probabilities (B, num_labels), and each row's most likely label."""

    probabilities: np.ndarray
    label_ids: np.ndarray
    labels: list[str]


class Model:
    """An exported GPT-2 folder loaded on an ONNX Runtime provider."""

    def __init__(self, folder: Path, manifest: Manifest, backend, tokenizer: Tokenizer | None):
        self.folder = folder
        self.manifest = manifest
        self.backend = backend  # OnnxRuntimeBackend or runtime.tensorrt_backend.TensorRTBackend
        self._tokenizer = tokenizer

    # ---- properties ----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The export's tokenizer; a clear error when the folder has none."""
        if self._tokenizer is None:
            raise TokenizerNotFoundError(
                f"{self.folder} has no tokenizer files (vocab.json + merges.txt or *.tiktoken): pass token ids "
                "to generate(), or re-export from a checkpoint folder that has them"
            )
        return self._tokenizer

    @property
    def eos_token_id(self) -> int | list[int] | None:
        return self.manifest.shape.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        """The configured pad id, else the (first) eos id: what left-pads a batch of texts (generate() itself falls
        back to the first eos id of its call, an eos_token_id option included, as transformers does)."""
        pad = self.manifest.shape.pad_token_id
        if pad is None:
            eos = self.eos_token_id
            pad = eos[0] if isinstance(eos, list) else eos
        return pad

    # ---- input checks ----------------------------------------------------------------------------

    def _check_ids(self, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray | None]:
        ids = _as_array(input_ids, "input_ids")
        if ids.size and ids.dtype.kind not in "iu":  # an empty list is float64: reported as empty below
            raise ValueError(f"input_ids must hold integer token ids, got dtype {ids.dtype}: pass int64 ids")
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2:
            raise ValueError(f"input_ids has shape {ids.shape}: expected (batch, sequence)")
        if ids.shape[1] == 0 or ids.shape[0] == 0:
            raise ValueError(f"input_ids has shape {ids.shape}: the prompt is empty; give at least one token")
        vocab = self.manifest.shape.vocab_size
        if ids.max() >= vocab or ids.min() < 0:
            bad = int(ids.max()) if ids.max() >= vocab else int(ids.min())
            raise ValueError(f"token id {bad} is out of range for vocab_size {vocab}: ids must be in [0, {vocab})")
        if attention_mask is None:
            return ids.astype(np.int64), None  # generate() infers it from pad_token_id, as transformers does
        mask = _as_array(attention_mask, "attention_mask")
        if mask.ndim == 1:
            mask = mask[None, :]
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, expected {ids.shape} like input_ids")
        if mask.dtype.kind not in "iub":
            raise ValueError(f"attention_mask must be 0/1 integers, got dtype {mask.dtype}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1")
        if (mask.sum(-1) == 0).any():
            raise ValueError("a row of attention_mask is all zeros: every prompt needs at least one real token")
        return ids.astype(np.int64), mask.astype(np.int64)

    def _require_head(self, heads: Sequence[str], what: str) -> None:
        if self.manifest.head not in heads:
            raise ValueError(
                f"{what} needs an export of head {' or '.join(heads)}, but {self.folder} holds the "
                f"{self.manifest.head!r} head: re-export with --head {heads[0]}"
            )

    def _options(self, options: dict) -> GenerationOptions:
        return GenerationOptions().with_overrides(**options)

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, input_ids, attention_mask=None, on_tokens=None, **options) -> np.ndarray:
        """Full sequences, prompt included: (batch * num_return_sequences, prompt + new), as transformers returns."""
        self._require_head(GENERATING_HEADS, "generate()")
        ids, mask = self._check_ids(input_ids, attention_mask)
        opts = self._options(options).resolved(ids.shape[1], self.manifest.shape.n_positions)
        limit = self.manifest.shape.n_positions
        if ids.shape[1] + opts.max_new_tokens > limit:
            raise ValueError(
                f"prompt of {ids.shape[1]} tokens + max_new_tokens {opts.max_new_tokens} = "
                f"{ids.shape[1] + opts.max_new_tokens} exceeds n_positions {limit}: shorten the prompt or lower "
                "max_new_tokens"
            )
        rows = ids.shape[0] * max(opts.num_beams, opts.num_return_sequences)
        decoder = self.backend.decoder(rows, ids.shape[1] + opts.max_new_tokens)
        # The configured pad only (not the pad_token_id property): without one, generate() pads with the first eos
        # id of this call, an eos_token_id option included, as transformers does. opts override both.
        return generate(
            decoder, ids, mask, opts, eos_token_id=self.eos_token_id, pad_token_id=self.manifest.shape.pad_token_id,
            on_tokens=on_tokens,
        )

    def _stops(self, opts: GenerationOptions) -> set[int]:
        """The eos ids that end this call's continuations: the eos_token_id option, else the model's."""
        eos = opts.eos_token_id if opts.eos_token_id is not None else self.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos]) if eos is not None else set()

    def _encode_batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ids and mask, as a decoder-only model wants its batch (prompts checked by _texts)."""
        encoded = [self.tokenizer.encode(p) for p in prompts]
        for prompt, ids in zip(prompts, encoded, strict=True):
            if not ids:
                raise ValueError(f"prompt {prompt!r} encodes to no tokens: give a non-empty prompt")
        width = max(len(ids) for ids in encoded)
        pad = self.pad_token_id or 0
        ids = np.full((len(encoded), width), pad, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, width - len(tokens) :] = tokens
            mask[row, width - len(tokens) :] = 1
        return ids, mask

    def _check_fits(self, ids: np.ndarray, what: str) -> None:
        """Encoded texts (B, T) must fit the position table: a clear error instead of onnxruntime's Gather one."""
        limit = self.manifest.shape.n_positions
        if ids.shape[-1] > limit:
            raise ValueError(
                f"{what} of {ids.shape[-1]} tokens exceeds n_positions {limit}: shorten it to {limit} tokens or fewer"
            )

    def _completion(self, tokens: np.ndarray, stops: set[int]) -> str:
        kept = []
        for token in tokens.tolist():
            if token in stops:
                break
            kept.append(token)
        return self.tokenizer.decode(kept)

    def generate_text(self, prompt: str | list[str], **options) -> str | list[str]:
        """Continuations of one prompt (str) or several (list, batched with left padding), up to the first eos."""
        prompts = _texts(prompt, "prompt")
        ids, mask = self._encode_batch(prompts)
        sequences = self.generate(ids, mask, **options)
        stops = self._stops(self._options(options))
        texts = [self._completion(row[ids.shape[1] :], stops) for row in sequences]
        return texts[0] if isinstance(prompt, str) and len(texts) == 1 else texts

    def stream(self, prompt: str, **options) -> Iterator[str]:
        """Yield the continuation of one prompt piece by piece as tokens are decoded (never a broken character)."""
        opts = self._options(options)
        if opts.num_beams > 1 or opts.num_return_sequences > 1:
            raise ValueError(
                "stream() decodes one hypothesis at a time: use num_beams=1 and num_return_sequences=1, "
                "or generate_text()"
            )
        if not isinstance(prompt, str):
            raise TypeError(
                f"prompts must be str, got {type(prompt).__name__} {prompt!r:.60}: pass text, or pass token ids "
                "to generate()"
            )
        ids, mask = self._encode_batch([prompt])
        pieces: queue.Queue = queue.Queue()
        done = object()
        stops = self._stops(opts)
        closed = threading.Event()  # the consumer stopped iterating: decoding stops at the next step

        def on_tokens(tokens: np.ndarray) -> None:
            if closed.is_set():
                raise _StreamClosed
            pieces.put(int(tokens[0]))

        def run() -> None:
            try:
                self.generate(ids, mask, on_tokens=on_tokens, **options)
                pieces.put(done)
            except _StreamClosed:
                pass
            except BaseException as e:  # surfaced to the consumer below
                pieces.put(e)

        worker = threading.Thread(target=run, name="runtime-stream", daemon=True)
        worker.start()
        decoder = self.tokenizer.stream_decoder()
        finished = False
        try:
            while True:
                item = pieces.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                if finished or item in stops:
                    finished = True
                    continue
                text = decoder.feed(item)
                if text:
                    yield text
            tail = decoder.flush()
            if tail:
                yield tail
        finally:  # also on break / close(): no decoding left running behind the consumer's back
            closed.set()
            worker.join()

    def end_profiling(self) -> Path:
        """Write the ONNX Runtime profile of every run since load (`load(..., profile=PREFIX)`); its path."""
        end = getattr(self.backend, "end_profiling", None)
        if end is None:
            raise RuntimeError(f"{self.backend.name} records no ONNX Runtime profile: profiling is for ONNX export "
                               "folders")
        return end()

    # ---- other heads -------------------------------------------------------------------------------

    def forward(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One raw call of the graph with an empty past filled in; returns every output by name.

        An in-place-cache export without a past runs through its decoder instead, which lays left-padded rows
        out as GroupQueryAttention wants them: {"logits": (B, T, V)} in float32, zeros at pad positions.
        """
        missing = [name for name in ("input_ids", "attention_mask", "position_ids") if name not in feeds]
        if missing:
            raise ValueError(f"forward() needs {', '.join(missing)} as well: pass input_ids, attention_mask and "
                             "position_ids")
        if self.manifest.kv_cache == "shared" and not any(name.startswith(PAST_PREFIX) for name in feeds):
            ids = feeds["input_ids"]
            decoder = self.backend.decoder(ids.shape[0], ids.shape[1])
            return {"logits": decoder.forward(ids, feeds["attention_mask"], feeds["position_ids"])}
        full = dict(feeds)
        rows = int(np.prod(feeds["input_ids"].shape[:-1]))
        shape = self.manifest.shape
        heads = list(shape.num_heads_per_layer) or [shape.n_head] * shape.n_layer
        dtype = np.float16 if self.manifest.dtype == "fp16" else np.float32
        for i in range(shape.n_layer):
            for kind in CACHE_KINDS:
                full.setdefault(past_name(i, kind), np.zeros((rows, heads[i], 0, shape.head_dim), dtype))
        if getattr(self.backend, "last_only", False):  # the session keeps 1 position for decoding: ask for every one
            full.setdefault(LOGITS_TO_KEEP, np.zeros(1, dtype=np.int64))
        return self.backend.run(full)

    def classify(self, texts: str | list[str]) -> Classification:
        """Sequence-classification exports: label probabilities per text (softmax, or sigmoid for multi-label)."""
        self._require_head(("seq-cls",), "classify()")
        ids, mask = self._encode_batch(_texts(texts, "text"))
        self._check_fits(ids, "a text")
        positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
        logits = self.forward({"input_ids": ids, "attention_mask": mask, "position_ids": positions})["logits"]
        logits = logits.astype(np.float32)  # (B, num_labels)
        if self.manifest.shape.problem_type == "multi_label_classification":
            probabilities = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities = shifted / shifted.sum(-1, keepdims=True)
        label_ids = probabilities.argmax(-1)
        id2label = self.manifest.shape.id2label
        return Classification(probabilities, label_ids, [id2label.get(str(i), f"LABEL_{i}") for i in label_ids])

    def score_choices(self, context: str, choices: list[str]) -> np.ndarray:
        """Double-heads exports: one multiple-choice logit per choice of `context + choice`."""
        self._require_head(("double-heads",), "score_choices()")
        if not isinstance(context, str):
            raise TypeError(f"context must be str, got {type(context).__name__}")
        choices = _texts(choices, "choice", single=False)
        ids, mask = self._encode_batch([context + choice for choice in choices])  # (C, T) left padded
        self._check_fits(ids, "context + choice")
        positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
        c, t = ids.shape
        feeds = {
            "input_ids": ids[None],
            "attention_mask": mask[None],
            "position_ids": positions[None],
            "mc_token_ids": np.full((1, c), t - 1, dtype=np.int64),
        }
        return self.forward(feeds)["mc_logits"][0].astype(np.float32)  # (C,)


class _StreamClosed(Exception):
    """Raised inside a stream's decoding thread once its consumer has stopped iterating."""


def _as_array(value, name: str) -> np.ndarray:
    """np.asarray, with rows of different lengths reported by name instead of numpy's inhomogeneous-shape error."""
    try:
        return np.asarray(value)
    except ValueError as e:
        raise ValueError(
            f"{name} rows have different lengths: pad every prompt on the left to one length and pass an "
            "attention_mask with 0 on the padding"
        ) from e


def _texts(value, name: str, single: bool = True) -> list[str]:
    """A str (if single) or a non-empty list / tuple of them, as a list; TypeError / ValueError naming the problem."""
    if single and isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        kinds = "a string or a list of strings" if single else "a list of strings"
        raise TypeError(f"{name}s must be {kinds}, got {type(value).__name__}")
    if not value:
        raise ValueError(f"no {name}s given: pass a non-empty list of strings")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"each {name} must be str, got {type(item).__name__} {item!r:.60}")
    return list(value)


def load(folder: str | Path, provider: str = "cpu", threads: int | None = None,
         profile: str | Path | None = None) -> Model:
    """Load an export folder (or a TensorRT engine folder): read its manifest, check the graph, open the tokenizer.

    profile: a path prefix; ONNX Runtime then times every node of every run, and `model.end_profiling()` writes
    the trace (Chrome trace JSON) and returns its path.
    """
    folder = Path(folder)
    if (folder / ENGINE_MANIFEST).is_file():
        if profile is not None:
            raise ValueError(f"profile is for ONNX export folders; {folder} is a TensorRT engine folder: profile "
                             "an engine with trtexec --dumpProfile or Nsight Systems")
        from .tensorrt_backend import load_engine

        manifest, backend = load_engine(folder)
    else:
        manifest = Manifest.load(folder)
        model_path = folder / manifest.model_file
        # Decoding reads the last position only: a growing-cache graph with logits_to_keep computes just that
        # (an in-place-cache batch is ragged, so its rows end at different columns and keep every position).
        last_only = manifest.kv_cache == "growing" and LOGITS_TO_KEEP in manifest.optional_inputs
        fixed = {LOGITS_TO_KEEP: np.ones(1, dtype=np.int64)} if last_only else None
        session = create_session(model_path, provider, threads, fixed,
                                 None if profile is None else str(profile))
        check_contract(session, manifest.io, model_path)
        backend = OnnxRuntimeBackend(session, manifest, provider, DEVICE_OF[provider], last_only)
    try:
        tokenizer = Tokenizer.from_folder(folder)
    except TokenizerNotFoundError:
        tokenizer = None
    return Model(folder, manifest, backend, tokenizer)
