"""GPT-2-style byte-level BPE tokenizers, with no torch dependency: tiktoken where it is exact, else tokenizers.

References: tiktoken's `gpt2` / `r50k_base` encodings (`tiktoken_ext/openai_public.py`) for the pattern and the
ranks format; Hugging Face tokenizers' BPE model and ByteLevel pre-tokenizer / decoder, the oracle for every
vocabulary (tests/runtime/test_tokenizer_trained.py trains them); transformers' `GPT2Tokenizer`
(`tokenization_gpt2.py`) for vocab.json + merges.txt.

Vocabularies load from a checkpoint's vocab.json + merges.txt (+ added_tokens.json), a tokenizer.json, a
`*.tiktoken` ranks file, or the GPT-2 ranks bundled in `runtime/assets/` (runtime/bpe_vocab.py reads and checks
them). Ids always come from the vocabulary and merge priority from merges.txt. Encoding runs on tiktoken (about
8x faster than tokenizers on one 1 MB text here) when `bpe_vocab.tiktoken_ranks` proves its rule gives the merge
list's tokens, as for GPT-2's own vocabulary and for ByteLevelBPETokenizer-trained ones (ids rising with merges),
and on Hugging Face tokenizers otherwise. Decoding is the same for both: each id's bytes, joined, then UTF-8 with
U+FFFD for invalid bytes.

Special and added tokens (<|endoftext|>, <|pad|>, ...) decode to their text but are never produced by encode():
their text in a prompt is encoded as plain text, as GPT-2's runtime always did (tiktoken's encode_ordinary), so
a user's text cannot inject control tokens. tokenizers' own encode() splits them out instead; feed their ids
directly where they are meant.

None of this goes through `tiktoken.load`: its readers cache every file they read under the temp dir keyed by the
*path* alone, so a file rewritten in place keeps loading its old contents, and `data_gym_to_mergeable_bpe_ranks`
drops the first and last line of merges.txt unconditionally and checks the vocabulary with `assert`.
"""

from __future__ import annotations

import codecs
import operator
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import tiktoken

from .bpe_vocab import (
    ADDED_TOKENS,
    ENDOFTEXT,
    TOKENIZER_JSON,
    BPEVocabulary,
    TokenizerNotFoundError,
    byte_symbol,
    bytes_to_unicode,
    merge_added_tokens,
    parse_tiktoken,
    read_added_tokens,
    read_bpe_files,
    read_tokenizer_json,
    tiktoken_ranks,
)

# GPT-2's pre-tokenizer split, as in the original encoder.py, transformers' GPT2Tokenizer and tokenizers' ByteLevel.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_RANKS_RESOURCE = "assets/gpt2.tiktoken"
BACKENDS = ("tiktoken", "tokenizers")

__all__ = [
    "ADDED_TOKENS", "BACKENDS", "ENDOFTEXT", "GPT2_PATTERN", "GPT2_RANKS_RESOURCE", "TOKENIZER_JSON", "StreamDecoder",
    "Tokenizer", "TokenizerNotFoundError", "bytes_to_unicode", "merge_added_tokens", "read_added_tokens",
]


def _utf8_safe(text: str) -> str:
    """text with lone surrogates (no UTF-8 exists for them) as U+FFFD, tiktoken's rule, so both backends agree."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _tokenizers_encoder(vocabulary: BPEVocabulary):
    """A Hugging Face tokenizers BPE of vocabulary's BPE tokens only (so added-token text stays plain text)."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers
    except ImportError as e:
        raise ImportError(
            f"{vocabulary.source} needs Hugging Face tokenizers (its merges are not tiktoken's rule): "
            "pip install tokenizers"
        ) from e
    model = models.BPE(
        {byte_symbol(token): token_id for token, token_id in vocabulary.tokens.items()},
        [(byte_symbol(a), byte_symbol(b)) for a, b in vocabulary.merges or ()],
        ignore_merges=vocabulary.ignore_merges,
    )
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=vocabulary.add_prefix_space, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    return hf


class Tokenizer:
    """Byte-level BPE: text to token ids and back, with `<|endoftext|>` as end of sequence."""

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        *,
        name: str = "gpt2",
    ) -> None:
        """Build from tiktoken ranks (ids == ranks); `<|endoftext|>` gets the next free id unless given."""
        special_tokens = dict(special_tokens or {})
        for token, token_id in special_tokens.items():
            if token_id < len(mergeable_ranks):
                raise ValueError(f"special token {token!r} has id {token_id}, which a BPE token already has")
        self._setup(BPEVocabulary(dict(mergeable_ranks), None, special_tokens, name), "tiktoken", name)

    @classmethod
    def from_vocabulary(cls, vocabulary: BPEVocabulary, backend: str | None = None, *, name: str | None = None
                        ) -> Tokenizer:
        """Build from a checked vocabulary on `backend` ("tiktoken", "tokenizers"; None: tiktoken where exact)."""
        tokenizer = cls.__new__(cls)
        tokenizer._setup(vocabulary, backend, name or vocabulary.source)
        return tokenizer

    def _setup(self, vocabulary: BPEVocabulary, backend: str | None, name: str) -> None:
        """Pick the backend and build the id -> bytes table that decoding and streaming share."""
        if backend not in (None, *BACKENDS):
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS} (or None to choose)")
        added = dict(vocabulary.added)
        if ENDOFTEXT not in added:  # GPT-2's end of sequence, at the next free id
            added[ENDOFTEXT] = max([*vocabulary.tokens.values(), *added.values()]) + 1
        ranks, why = tiktoken_ranks(vocabulary) if backend != "tokenizers" else (None, "asked for tokenizers")
        if backend == "tiktoken" and ranks is None:
            raise ValueError(f"{vocabulary.source} cannot run on tiktoken exactly: {why}; use backend='tokenizers'")
        self._vocabulary = vocabulary
        self._backend = "tiktoken" if ranks is not None else "tokenizers"
        self._backend_reason = why
        if ranks is not None:
            self._encoding: tiktoken.Encoding | None = tiktoken.Encoding(
                name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={}
            )
            self._hf = None
        else:
            self._encoding, self._hf = None, _tokenizers_encoder(vocabulary)
        size = max([*vocabulary.tokens.values(), *added.values()]) + 1
        table: list[bytes | None] = [None] * size
        for token, token_id in vocabulary.tokens.items():
            table[token_id] = token
        for text, token_id in added.items():
            table[token_id] = text.encode("utf-8")
        self._id_bytes = table
        self._n_bpe = len(vocabulary.tokens)
        self._added = added
        self._eos_token_id = added[ENDOFTEXT]
        self._name = name

    @classmethod
    def from_files(cls, vocab_json: str | Path, merges_txt: str | Path,
                   added_tokens_json: str | Path | None = None, *, backend: str | None = None) -> Tokenizer:
        """Load a checkpoint's vocab.json + merges.txt (+ added_tokens.json): transformers' GPT2Tokenizer format.

        Added tokens (tokenizer.add_tokens / add_special_tokens, saved in added_tokens.json) decode to their text
        and, like <|endoftext|>, are encoded as plain text when they appear in a prompt.
        """
        vocabulary = read_bpe_files(vocab_json, merges_txt, added_tokens_json)
        return cls.from_vocabulary(vocabulary, backend, name=f"bpe:{Path(vocab_json).parent.name}")

    @classmethod
    def from_tokenizer_json(cls, path: str | Path, *, backend: str | None = None) -> Tokenizer:
        """Load a Hugging Face tokenizer.json holding a byte-level BPE (what ByteLevelBPETokenizer.save writes)."""
        return cls.from_vocabulary(read_tokenizer_json(path), backend, name=f"bpe:{Path(path).parent.name}")

    @classmethod
    def from_tiktoken(cls, path: str | Path) -> Tokenizer:
        """Load a `*.tiktoken` ranks file; `<|endoftext|>` gets the id after the last rank."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerNotFoundError(f"tokenizer file {path} does not exist")
        return cls(parse_tiktoken(path.read_bytes(), str(path)), name=f"tiktoken:{path.stem}")

    @classmethod
    def from_folder(cls, folder: str | Path, *, backend: str | None = None) -> Tokenizer:
        """Load vocab.json + merges.txt from folder if present, else its tokenizer.json, else its `*.tiktoken`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerNotFoundError(f"tokenizer folder {folder} does not exist or is not a folder")
        vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
        if vocab_json.is_file() and merges_txt.is_file():
            added = folder / ADDED_TOKENS
            return cls.from_files(vocab_json, merges_txt, added if added.is_file() else None, backend=backend)
        if (folder / TOKENIZER_JSON).is_file():
            return cls.from_tokenizer_json(folder / TOKENIZER_JSON, backend=backend)
        tiktoken_files = sorted(folder.glob("*.tiktoken"))
        if len(tiktoken_files) == 1:
            return cls.from_tiktoken(tiktoken_files[0])
        if len(tiktoken_files) > 1:
            names = ", ".join(p.name for p in tiktoken_files)
            raise ValueError(
                f"{folder} has several *.tiktoken files ({names}); pass one to Tokenizer.from_tiktoken"
            )
        found = [p.name for p in (vocab_json, merges_txt) if p.is_file()]
        hint = f" (found only {found[0]})" if found else ""
        raise TokenizerNotFoundError(
            f"no tokenizer in {folder}: looked for vocab.json + merges.txt or a *.tiktoken file, and tokenizer.json"
            f"{hint}"
        )

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """Load GPT-2's own vocabulary (r50k_base), bundled with this package so no download is needed."""
        data = resources.files(__package__).joinpath(GPT2_RANKS_RESOURCE).read_bytes()
        return cls(parse_tiktoken(data, f"{__package__}/{GPT2_RANKS_RESOURCE}"), name="gpt2")

    @property
    def eos_token_id(self) -> int:
        """Id of `<|endoftext|>`, which ends (and, in GPT-2, also starts) a sequence."""
        return self._eos_token_id

    @property
    def vocab_size(self) -> int:
        """Number of token ids, i.e. one more than the largest id; the model's logits have this width."""
        return len(self._id_bytes)

    @property
    def added_tokens(self) -> dict[str, int]:
        """Added and special tokens (text -> id), `<|endoftext|>` included: decoded as text, never encoded."""
        return dict(self._added)

    @property
    def unassigned_ids(self) -> frozenset[int]:
        """Ids below vocab_size that name no token (gaps between added tokens)."""
        return frozenset(i for i, token in enumerate(self._id_bytes) if token is None)

    @property
    def vocabulary(self) -> BPEVocabulary:
        """The checked vocabulary this tokenizer runs."""
        return self._vocabulary

    @property
    def backend(self) -> str:
        """"tiktoken" or "tokenizers": the library that encodes."""
        return self._backend

    @property
    def encoding(self) -> tiktoken.Encoding | None:
        """The underlying tiktoken encoding (its ranks are the ids), or None on the tokenizers backend."""
        return self._encoding

    def encode(self, text: str) -> list[int]:
        """Return the token ids of text; special-token strings in text are encoded as plain text."""
        if self._encoding is not None:
            if self._vocabulary.add_prefix_space and text and not text.startswith(" "):
                text = " " + text  # tokenizers' ByteLevel(add_prefix_space=True), for a tokenizer.json asking it
            # encode_ordinary never raises on special-token text, unlike tiktoken's encode().
            return self._encoding.encode_ordinary(text)
        return self._hf.encode(_utf8_safe(text), add_special_tokens=False).ids

    def _check_id(self, token_id: int) -> int:
        """Return token_id as an int, or raise ValueError if it names no token."""
        token_id = operator.index(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range for vocab_size {self.vocab_size}")
        if self._id_bytes[token_id] is None:
            raise ValueError(
                f"token id {token_id} is unassigned in this vocabulary (a gap between added tokens)"
            )
        return token_id

    def token_bytes(self, token_id: int) -> bytes:
        """Return the bytes one token stands for, which may be part of a UTF-8 character."""
        return self._id_bytes[self._check_id(token_id)]

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        ids = [operator.index(i) for i in ids]
        table = self._id_bytes
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")
        except (IndexError, TypeError):  # out of range, or an unassigned id (None): name the first bad one
            for i in ids:
                self._check_id(i)
            raise

    def stream_decoder(self) -> StreamDecoder:
        """Return a StreamDecoder for ids generated one at a time."""
        return StreamDecoder(self)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name={self._name!r}, vocab_size={self.vocab_size}, "
            f"eos_token_id={self.eos_token_id}, backend={self._backend!r})"
        )


class StreamDecoder:
    """Decodes ids fed one at a time into text pieces that never split a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        """Start an empty stream for tokenizer."""
        self._tokenizer = tokenizer
        # The incremental decoder holds back an incomplete character and replaces invalid bytes exactly
        # as bytes.decode(errors="replace") does, so the pieces join up to Tokenizer.decode(ids).
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Add one token id and return the text it completes (possibly "")."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End the stream: return held-back bytes (as U+FFFD if incomplete) and reset for reuse."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
