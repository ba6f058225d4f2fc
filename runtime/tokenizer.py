"""GPT-2's byte-level BPE tokenizer on tiktoken, with no torch dependency.

References: tiktoken's `gpt2` / `r50k_base` encodings (`tiktoken_ext/openai_public.py`) for the
pattern and the ranks format, and transformers' `GPT2Tokenizer` (`tokenization_gpt2.py`) for the
vocab.json + merges.txt format and its `bytes_to_unicode` table; the tests use the latter as oracle.

Vocabularies load from three sources: a checkpoint's vocab.json + merges.txt, a `*.tiktoken` ranks
file, or the GPT-2 ranks bundled in `runtime/assets/`. None of them goes through `tiktoken.load`:
its readers cache every file they read under the temp dir keyed by the *path* alone, so a file
rewritten in place keeps loading its old contents, and `data_gym_to_mergeable_bpe_ranks` drops the
first and last line of merges.txt unconditionally and checks the vocabulary with `assert`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import operator
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import tiktoken

# GPT-2's pre-tokenizer split, as in the original encoder.py and transformers' GPT2Tokenizer.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
GPT2_RANKS_RESOURCE = "assets/gpt2.tiktoken"
ADDED_TOKENS = "added_tokens.json"  # transformers' file for tokenizer.add_tokens / add_special_tokens


class TokenizerNotFoundError(FileNotFoundError):
    """No tokenizer files where a tokenizer was asked for."""


def bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2's map from each byte to the printable character that stands for it in vocab.json."""
    # Printable Latin-1 bytes stand for themselves; the other 68 are shifted past U+00FF, in order.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return table


def _require_file(path: Path) -> None:
    """Raise TokenizerNotFoundError unless path is an existing file."""
    if not path.is_file():
        raise TokenizerNotFoundError(f"tokenizer file {path} does not exist")


def _parse_merges(text: str, source: Path) -> list[tuple[str, str]]:
    """Return the merge pairs of a merges.txt, with or without its '#version' header and final newline."""
    merges = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(
                f"{source} line {number}: expected two tokens separated by a space, got {line!r}"
            )
        merges.append((pair[0], pair[1]))
    return merges


def _ranks_from_merges(merges: list[tuple[str, str]], source: Path) -> dict[bytes, int]:
    """Return tiktoken ranks: the 256 bytes in GPT-2's order, then one token per merge, in merge order."""
    byte_encoder = bytes_to_unicode()
    byte_decoder = {char: byte for byte, char in byte_encoder.items()}
    # A merge's rank is its token id, so the byte tokens take ids 0-255 in bytes_to_unicode order.
    ranks = {bytes([byte]): rank for rank, byte in enumerate(byte_encoder)}
    for number, (first, second) in enumerate(merges, start=1):
        try:
            token = bytes(byte_decoder[c] for c in first + second)
        except KeyError as e:
            raise ValueError(
                f"{source} merge {number} ({first!r} {second!r}) has character {e.args[0]!r}, which is not "
                "in GPT-2's byte-to-unicode table: this is not a byte-level BPE merges file"
            ) from e
        if token in ranks:
            raise ValueError(f"{source} merge {number} ({first!r} {second!r}) repeats token {token!r}")
        ranks[token] = len(ranks)
    return ranks


def _split_vocab(vocab: dict[str, int], ranks: dict[bytes, int], source: Path) -> dict[str, int]:
    """Check vocab.json against the merge ranks and return its other entries (added tokens) by id."""
    byte_decoder = {char: byte for byte, char in bytes_to_unicode().items()}
    added: dict[str, int] = {}
    matched = 0
    for key, token_id in vocab.items():
        if not isinstance(token_id, int) or token_id < 0:
            raise ValueError(f"{source}: token {key!r} has id {token_id!r}, expected a non-negative integer")
        token = bytes(byte_decoder[c] for c in key) if all(c in byte_decoder for c in key) else None
        rank = ranks.get(token) if token is not None else None
        if rank is None:
            # Not a BPE token: an added token such as <|endoftext|>, stored as plain text.
            if token_id < len(ranks):
                raise ValueError(
                    f"{source}: added token {key!r} has id {token_id}, which merges.txt already gives to "
                    f"a BPE token (ids 0-{len(ranks) - 1}); vocab.json and merges.txt do not belong together"
                )
            added[key] = token_id
        elif rank != token_id:
            raise ValueError(
                f"{source}: token {key!r} has id {token_id} but merges.txt ranks it {rank}; "
                "vocab.json and merges.txt do not belong together"
            )
        else:
            matched += 1
    if matched != len(ranks):
        raise ValueError(
            f"{source} has {matched} of the {len(ranks)} tokens that merges.txt defines (256 bytes + "
            f"{len(ranks) - 256} merges); vocab.json and merges.txt do not belong together"
        )
    if len(set(added.values())) != len(added):
        raise ValueError(f"{source}: two added tokens share an id: {added}")
    return added


def read_added_tokens(path: Path, n_ranks: int) -> dict[str, int]:
    """added_tokens.json: token text -> id, every id past the BPE ranks."""
    try:
        added = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}): restore it or delete it") from e
    if not isinstance(added, dict):
        raise ValueError(f"{path} must hold a JSON object of token -> id, got {type(added).__name__}")
    for token, token_id in added.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < n_ranks:
            raise ValueError(
                f"{path}: added token {token!r} has id {token_id!r}; added ids must be integers >= {n_ranks} "
                "(the ids before are merges.txt's BPE tokens)"
            )
    return added


def merge_added_tokens(vocab_added: dict[str, int], file_added: dict[str, int], source: str | Path) -> dict[str, int]:
    """vocab.json's added tokens and added_tokens.json's, which must agree where they overlap."""
    merged = dict(vocab_added)
    for token, token_id in file_added.items():
        if merged.get(token, token_id) != token_id:
            raise ValueError(f"{source}: {token!r} has id {token_id} but vocab.json gives it {merged[token]}")
        merged[token] = token_id
    if len(set(merged.values())) != len(merged):
        raise ValueError(f"{source}: two added tokens share an id: {merged}")
    return merged


def _parse_tiktoken(data: bytes, source: str) -> dict[bytes, int]:
    """Return the ranks of a tiktoken file: one 'base64-token rank' pair per line."""
    ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as e:
            raise ValueError(
                f"{source} line {number}: expected '<base64 token> <rank>', got {line[:80]!r}"
            ) from e
    if set(ranks.values()) != set(range(len(ranks))):
        raise ValueError(f"{source}: ranks must be 0..{len(ranks) - 1} with no gaps or repeats")
    return ranks


class Tokenizer:
    """GPT-2 byte-level BPE: text to token ids and back, with `<|endoftext|>` as end of sequence."""

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        *,
        name: str = "gpt2",
    ) -> None:
        """Build from tiktoken ranks; `<|endoftext|>` gets the next free id unless special_tokens has it."""
        special_tokens = dict(special_tokens or {})
        n_ranks = len(mergeable_ranks)
        if ENDOFTEXT not in special_tokens:
            special_tokens[ENDOFTEXT] = max([n_ranks - 1, *special_tokens.values()]) + 1
        for token, token_id in special_tokens.items():
            if token_id < n_ranks:
                raise ValueError(f"special token {token!r} has id {token_id}, which a BPE token already has")
        self._encoding = tiktoken.Encoding(
            name, pat_str=GPT2_PATTERN, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens
        )
        self._n_ranks = n_ranks
        self._special_ids = frozenset(special_tokens.values())
        self._eos_token_id = special_tokens[ENDOFTEXT]

    @classmethod
    def from_files(cls, vocab_json: str | Path, merges_txt: str | Path,
                   added_tokens_json: str | Path | None = None) -> Tokenizer:
        """Load a checkpoint's vocab.json + merges.txt (+ added_tokens.json): transformers' GPT2Tokenizer format.

        Added tokens (tokenizer.add_tokens / add_special_tokens, saved in added_tokens.json) decode to their text
        and, like <|endoftext|>, are encoded as plain text when they appear in a prompt.
        """
        vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
        _require_file(vocab_json)
        _require_file(merges_txt)
        ranks = _ranks_from_merges(
            _parse_merges(merges_txt.read_text(encoding="utf-8"), merges_txt), merges_txt
        )
        try:
            vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{vocab_json} is not valid JSON: {e}") from e
        if not isinstance(vocab, dict):
            raise ValueError(
                f"{vocab_json} must hold a JSON object of token -> id, got {type(vocab).__name__}"
            )
        added = _split_vocab(vocab, ranks, vocab_json)
        if added_tokens_json is not None:
            added = merge_added_tokens(added, read_added_tokens(Path(added_tokens_json), len(ranks)), added_tokens_json)
        return cls(ranks, added, name=f"bpe:{vocab_json.parent.name}")

    @classmethod
    def from_tiktoken(cls, path: str | Path) -> Tokenizer:
        """Load a `*.tiktoken` ranks file; `<|endoftext|>` gets the id after the last rank."""
        path = Path(path)
        _require_file(path)
        return cls(_parse_tiktoken(path.read_bytes(), str(path)), name=f"tiktoken:{path.stem}")

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        """Load vocab.json + merges.txt from folder if present, else its single `*.tiktoken` file."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerNotFoundError(f"tokenizer folder {folder} does not exist or is not a folder")
        vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
        if vocab_json.is_file() and merges_txt.is_file():
            added = folder / ADDED_TOKENS
            return cls.from_files(vocab_json, merges_txt, added if added.is_file() else None)
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
            f"no tokenizer in {folder}: looked for vocab.json + merges.txt or a *.tiktoken file{hint}"
        )

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """Load GPT-2's own vocabulary (r50k_base), bundled with this package so no download is needed."""
        data = resources.files(__package__).joinpath(GPT2_RANKS_RESOURCE).read_bytes()
        return cls(_parse_tiktoken(data, f"{__package__}/{GPT2_RANKS_RESOURCE}"), name="gpt2")

    @property
    def eos_token_id(self) -> int:
        """Id of `<|endoftext|>`, which ends (and, in GPT-2, also starts) a sequence."""
        return self._eos_token_id

    @property
    def vocab_size(self) -> int:
        """Number of token ids, i.e. one more than the largest id; the model's logits have this width."""
        return self._encoding.n_vocab

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying tiktoken encoding."""
        return self._encoding

    def encode(self, text: str) -> list[int]:
        """Return the token ids of text; special-token strings in text are encoded as plain text."""
        # encode_ordinary never raises on special-token text, unlike tiktoken's encode().
        return self._encoding.encode_ordinary(text)

    def _check_id(self, token_id: int) -> int:
        """Return token_id as an int, or raise ValueError if it names no token."""
        token_id = operator.index(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range for vocab_size {self.vocab_size}")
        if token_id >= self._n_ranks and token_id not in self._special_ids:
            raise ValueError(
                f"token id {token_id} is unassigned in this vocabulary (a gap between added tokens)"
            )
        return token_id

    def token_bytes(self, token_id: int) -> bytes:
        """Return the bytes one token stands for, which may be part of a UTF-8 character."""
        return self._encoding.decode_single_token_bytes(self._check_id(token_id))

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        ids = [operator.index(i) for i in ids]
        # Only ids outside the BPE ranks need the slower per-id check.
        if ids and (min(ids) < 0 or max(ids) >= self._n_ranks):
            ids = [self._check_id(i) for i in ids]
        return self._encoding.decode(ids, errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """Return a StreamDecoder for ids generated one at a time."""
        return StreamDecoder(self)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name={self._encoding.name!r}, vocab_size={self.vocab_size}, "
            f"eos_token_id={self.eos_token_id})"
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
