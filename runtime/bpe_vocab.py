"""Byte-level BPE vocabularies read from vocab.json + merges.txt, tokenizer.json or `*.tiktoken`, checked once.

References: Hugging Face tokenizers' BPE model (`tokenizers/src/models/bpe/word.rs`, `merge_all`: the adjacent pair
earliest in merges.txt merges first, leftmost on ties) and its ByteLevel pre-tokenizer / decoder; tiktoken's
`byte_pair_merge` (`src/lib.rs`: the adjacent pair whose *concatenation* has the lowest rank merges first, any pair
whose concatenation is a token, and a piece that is itself a token is returned whole); transformers' GPT2Tokenizer
(`tokenization_gpt2.py`) for the files and the `bytes_to_unicode` table.

A vocabulary is what both encoders need: every BPE token's bytes and id (ids come from the vocabulary, not from the
order of merges.txt), the merges in priority order, and the added tokens (text -> id). `tiktoken_ranks` decides
whether tiktoken's algorithm gives exactly the merge-list algorithm's tokens on every text; the proof is its docstring.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENDOFTEXT = "<|endoftext|>"
ADDED_TOKENS = "added_tokens.json"  # transformers' file for tokenizer.add_tokens / add_special_tokens
TOKENIZER_JSON = "tokenizer.json"  # Hugging Face tokenizers' single-file format


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


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {char: byte for byte, char in BYTE_ENCODER.items()}


def symbol_bytes(symbol: str) -> bytes | None:
    """The bytes a vocab.json / merges.txt symbol stands for, or None when it is not byte-level text."""
    try:
        return bytes(BYTE_DECODER[c] for c in symbol)
    except KeyError:
        return None


def byte_symbol(token: bytes) -> str:
    """The vocab.json / merges.txt spelling of token's bytes."""
    return "".join(BYTE_ENCODER[b] for b in token)


@dataclass(frozen=True)
class BPEVocabulary:
    """A byte-level BPE vocabulary: token bytes -> id, merge priority, added tokens, and the pre-tokenizer's flags."""

    tokens: dict[bytes, int]  # every BPE token (the 256 bytes and one per merge) -> its id
    # Merge priority, earliest first; None for tiktoken ranks, where a token's rank is its priority.
    merges: tuple[tuple[bytes, bytes], ...] | None
    added: dict[str, int]  # added / special tokens: text -> id (decoded as their text, never produced by BPE)
    source: str
    add_prefix_space: bool = False  # ByteLevel(add_prefix_space=True): a space goes before text not starting with one
    ignore_merges: bool = False  # tokenizers' BPE(ignore_merges=True): a piece that is a token is taken whole
    bpe_ids: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bpe_ids", frozenset(self.tokens.values()))

    @property
    def size(self) -> int:
        """One more than the largest id: the width of logits this vocabulary needs."""
        return max([*self.tokens.values(), *self.added.values()]) + 1


# ---- vocab.json + merges.txt (+ added_tokens.json) ----------------------------------------------------------


def _require_file(path: Path) -> None:
    """Raise TokenizerNotFoundError unless path is an existing file."""
    if not path.is_file():
        raise TokenizerNotFoundError(f"tokenizer file {path} does not exist")


def _read_json(path: Path) -> Any:
    """Parse a JSON file, naming it when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def parse_merges(text: str, source: Path) -> list[tuple[str, str]]:
    """Return the merge pairs of a merges.txt, with or without its '#version' header and final newline."""
    merges = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"{source} line {number}: expected two tokens separated by a space, got {line!r}")
        merges.append((pair[0], pair[1]))
    return merges


def _check_ids(vocab: dict[str, Any], source: Path | str) -> None:
    """Every id a non-negative integer, no id given to two tokens."""
    owner: dict[int, str] = {}
    for key, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ValueError(f"{source}: token {key!r} has id {token_id!r}, expected a non-negative integer")
        if token_id in owner:
            raise ValueError(f"{source} gives id {token_id} to both {owner[token_id]!r} and {key!r}")
        owner[token_id] = key


def build_vocabulary(vocab: dict[str, int], merges: list[tuple[str, str]], source: Path | str, *,
                     merges_source: Path | str | None = None, add_prefix_space: bool = False,
                     ignore_merges: bool = False) -> BPEVocabulary:
    """Check a byte-level vocab + merges pair and split it into BPE tokens (bytes and merges) and added tokens."""
    merges_source = merges_source or source
    _check_ids(vocab, source)
    missing = [BYTE_ENCODER[b] for b in range(256) if BYTE_ENCODER[b] not in vocab]
    if missing:
        raise ValueError(
            f"{source} lacks {len(missing)} of the 256 byte symbols ({''.join(missing[:10])!r}...): a byte-level BPE "
            "vocabulary has all of them (tokenizers' ByteLevelBPETokenizer trains with ByteLevel.alphabet()), and "
            "text with those bytes would lose them"
        )
    tokens = {bytes([BYTE_DECODER[c]]): vocab[c] for c in BYTE_ENCODER.values()}
    pairs: list[tuple[bytes, bytes]] = []
    for number, (first, second) in enumerate(merges, start=1):
        parts = symbol_bytes(first), symbol_bytes(second)
        if parts[0] is None or parts[1] is None:
            bad = next(c for c in first + second if c not in BYTE_DECODER)
            raise ValueError(
                f"{merges_source} merge {number} ({first!r} {second!r}) has character {bad!r}, which is not in "
                "GPT-2's byte-to-unicode table: this is not a byte-level BPE merges file"
            )
        for symbol in (first, second, first + second):
            if symbol not in vocab:
                raise ValueError(
                    f"{merges_source} merge {number} ({first!r} {second!r}) needs token {symbol!r}, which {source} "
                    "lacks: vocab.json and merges.txt do not belong together"
                )
        pairs.append((parts[0], parts[1]))
        tokens[parts[0] + parts[1]] = vocab[first + second]
    bpe_ids = set(tokens.values())
    # Entries no merge builds are added tokens (<|endoftext|> and the like), stored as their plain text.
    added = {key: token_id for key, token_id in vocab.items() if token_id not in bpe_ids}
    return BPEVocabulary(tokens, tuple(pairs), added, str(source), add_prefix_space, ignore_merges)


def read_added_tokens(path: Path, vocabulary: BPEVocabulary | int) -> dict[str, int]:
    """added_tokens.json: token text -> id, every id one the BPE tokens leave free."""
    added = _read_json(path) if path.is_file() else None
    if not isinstance(added, dict):
        raise ValueError(f"{path} must hold a JSON object of token -> id, got {type(added).__name__}")
    if isinstance(vocabulary, int):  # the number of BPE tokens, which hold ids 0..n-1
        bpe_ids, contiguous = frozenset(range(vocabulary)), vocabulary
    else:
        bpe_ids = vocabulary.bpe_ids
        contiguous = len(bpe_ids) if bpe_ids == frozenset(range(len(bpe_ids))) else None
    for token, token_id in added.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0 or token_id in bpe_ids:
            limit = (f"added ids must be integers >= {contiguous} (the ids before are merges.txt's BPE tokens)"
                     if contiguous is not None else "added ids must be integers the BPE tokens leave free")
            raise ValueError(f"{path}: added token {token!r} has id {token_id!r}; {limit}")
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


def read_bpe_files(vocab_json: str | Path, merges_txt: str | Path,
                   added_tokens_json: str | Path | None = None) -> BPEVocabulary:
    """Read transformers' GPT2Tokenizer files: vocab.json + merges.txt (+ added_tokens.json)."""
    vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
    _require_file(vocab_json)
    _require_file(merges_txt)
    merges = parse_merges(merges_txt.read_text(encoding="utf-8"), merges_txt)
    vocab = _read_json(vocab_json)
    if not isinstance(vocab, dict):
        raise ValueError(f"{vocab_json} must hold a JSON object of token -> id, got {type(vocab).__name__}")
    vocabulary = build_vocabulary(vocab, merges, vocab_json, merges_source=merges_txt)
    if added_tokens_json is None:
        return vocabulary
    path = Path(added_tokens_json)
    added = merge_added_tokens(vocabulary.added, read_added_tokens(path, vocabulary), path)
    return BPEVocabulary(vocabulary.tokens, vocabulary.merges, added, vocabulary.source)


# ---- tokenizer.json --------------------------------------------------------------------------------------------


def _only_byte_level(component: Any, name: str, path: Path) -> dict[str, Any] | None:
    """The ByteLevel entry of a pre_tokenizer / decoder / post_processor (alone or the one step of a Sequence)."""
    if component is None:
        return None
    steps = component.get("pretokenizers") or component.get("decoders") or component.get("processors") \
        if component.get("type") == "Sequence" else [component]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel":
        return steps[0]
    kinds = [step.get("type") for step in steps]
    raise ValueError(
        f"{path}: {name} is {kinds if len(kinds) != 1 else kinds[0]!r}, not ByteLevel: this runtime runs byte-level "
        "BPE tokenizers only (GPT-2's); convert the tokenizer or use transformers"
    )


def read_tokenizer_json(path: str | Path) -> BPEVocabulary:
    """Read a Hugging Face tokenizer.json, refusing (by name) whatever is not plain byte-level BPE."""
    path = Path(path)
    _require_file(path)
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ValueError(f"{path}: model type is {kind!r}, not 'BPE': this runtime runs byte-level BPE tokenizers only")
    normalizer = data.get("normalizer")
    if normalizer is not None and not (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        raise ValueError(
            f"{path}: has a {normalizer.get('type')!r} normalizer, which byte-level BPE (GPT-2's) does not: this "
            "runtime would encode differently, so it refuses the file"
        )
    pre = _only_byte_level(data.get("pre_tokenizer"), "pre_tokenizer", path)
    if pre is None or not pre.get("use_regex", True):
        raise ValueError(f"{path}: the pre_tokenizer must be ByteLevel with use_regex true (GPT-2's split)")
    decoder = _only_byte_level(data.get("decoder"), "decoder", path)
    if decoder is None:
        raise ValueError(f"{path}: has no ByteLevel decoder, so its tokens would not decode to bytes")
    _only_byte_level(data.get("post_processor"), "post_processor", path)  # a template would add ids
    for key, plain in (("dropout", None), ("continuing_subword_prefix", ""), ("end_of_word_suffix", ""),
                       ("byte_fallback", False)):
        if model.get(key) not in (plain, None) and not (key == "dropout" and model.get(key) == 0):
            raise ValueError(f"{path}: model.{key} is {model.get(key)!r}; byte-level BPE needs {plain!r}")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: model.vocab must be a JSON object of token -> id")
    merges = []
    for number, merge in enumerate(model.get("merges") or [], start=1):
        pair = merge.split(" ") if isinstance(merge, str) else merge  # "a b" (tokenizers < 0.20) or ["a", "b"]
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
            raise ValueError(f"{path}: model.merges entry {number} is {merge!r}, expected 'a b' or ['a', 'b']")
        merges.append((pair[0], pair[1]))
    vocabulary = build_vocabulary(vocab, merges, path, add_prefix_space=bool(pre.get("add_prefix_space")),
                                  ignore_merges=bool(model.get("ignore_merges")))
    added = dict(vocabulary.added)
    by_id = {token_id: token for token, token_id in vocabulary.tokens.items()}
    for entry in data.get("added_tokens") or []:
        content, token_id = entry.get("content"), entry.get("id")
        if not isinstance(content, str) or not isinstance(token_id, int) or token_id < 0:
            raise ValueError(f"{path}: added token {entry!r} needs a string content and a non-negative id")
        if token_id in by_id:
            if symbol_bytes(content) != by_id[token_id] and content.encode("utf-8") != by_id[token_id]:
                raise ValueError(f"{path}: added token {content!r} has id {token_id}, which is the BPE token "
                                 f"{byte_symbol(by_id[token_id])!r}")
            continue  # a BPE token also listed as added: BPE produces and decodes it anyway
        if added.get(content, token_id) != token_id:
            raise ValueError(f"{path}: added token {content!r} has id {token_id} but model.vocab gives it "
                             f"{added[content]}")
        added[content] = token_id
    _check_ids(added, path)
    return BPEVocabulary(vocabulary.tokens, vocabulary.merges, added, str(path), vocabulary.add_prefix_space,
                         vocabulary.ignore_merges)


# ---- *.tiktoken ------------------------------------------------------------------------------------------------


def parse_tiktoken(data: bytes, source: str) -> dict[bytes, int]:
    """Return the ranks of a tiktoken file: one 'base64-token rank' pair per line."""
    ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as e:
            raise ValueError(f"{source} line {number}: expected '<base64 token> <rank>', got {line[:80]!r}") from e
    if set(ranks.values()) != set(range(len(ranks))):
        raise ValueError(f"{source}: ranks must be 0..{len(ranks) - 1} with no gaps or repeats")
    return ranks


def bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Merge token's bytes with ranks below max_rank, lowest rank first, as BPE built it (tiktoken's `bpe`)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = None, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def vocab_and_merges(ranks: dict[bytes, int], source: str | Path) -> tuple[dict[str, int], list[str]]:
    """vocab.json's mapping and merges.txt's lines (no header) of tiktoken ranks: each merge is the two parts BPE
    reaches for a token with the lower ranks only."""
    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[byte_symbol(token)] = rank
        if len(token) > 1:
            parts = bpe_split(ranks, token, rank)
            if len(parts) != 2:
                raise ValueError(f"{source}: token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens")
            merges.append(f"{byte_symbol(parts[0])} {byte_symbol(parts[1])}")
    return vocab, merges


# ---- when tiktoken's algorithm is the merge list's --------------------------------------------------------------


def _rank_trajectory_end(token: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """The last two parts tiktoken's rule reaches on token's bytes alone (lowest-ranked concatenation first)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def vocabulary_digest(vocabulary: BPEVocabulary) -> str:
    """sha256 of the BPE tokens with their ids and the merges in order (not the added tokens)."""
    digest = hashlib.sha256()
    for token, token_id in sorted(vocabulary.tokens.items(), key=lambda item: item[1]):
        digest.update(b"%d %s\n" % (token_id, base64.b64encode(token)))
    for first, second in vocabulary.merges or ():
        digest.update(b"%s %s\n" % (base64.b64encode(first), base64.b64encode(second)))
    return digest.hexdigest()


# GPT-2's own vocab.json + merges.txt (r50k_base with its 50,000 merges), which passes the check below; knowing it
# saves the check's ~1 s of Python at every load (tests/runtime/test_tokenizer_trained.py recomputes both).
PROVEN_DIGESTS = frozenset({"85d20166bceef506c4c7e200be26509787fec58e7622b51f6da5fa5ccdb2fed8"})


def tiktoken_ranks(vocabulary: BPEVocabulary) -> tuple[dict[bytes, int] | None, str]:
    """tiktoken ranks that give exactly the merge list's tokens on every text (as ids), or None and why not.

    The ranks are the ids, so they need no translation; they are valid when (1) the merged tokens' ids rise in
    merges.txt order (then tiktoken's "lowest rank of the concatenation" ranks every merge pair as merges.txt
    does) and (2) for every merge (a, b) building t, tiktoken's rule run on t's bytes alone reaches [a, b] as its
    last two parts. Proof that then both algorithms take the same steps on every piece: induct on the steps. In a
    state both share, every part x was reached from x's bytes alone by the same rule (merges inside x's span
    never depend on parts outside it, because each step takes the lowest pair of the whole piece, so also of the
    span). If adjacent parts x, y concatenate to a token t, the same argument puts [x, y] on the run over t's bytes
    alone, whose two-part state is unique, so (x, y) = (a, b) by (2): the pairs tiktoken may merge are exactly the
    merge pairs, ranked alike by (1), and both take the leftmost lowest. tiktoken's shortcut (a piece that is a
    token is taken whole) is then what the merges reach too, by (2) on that token, which also makes
    tokenizers' `ignore_merges` irrelevant. The tests check the same equality on real text.
    """
    if vocabulary.merges is None:  # tiktoken ranks: the rule is the definition
        return dict(vocabulary.tokens), "tiktoken ranks"
    ranks = vocabulary.tokens
    if len(ranks) > 20_000 and vocabulary_digest(vocabulary) in PROVEN_DIGESTS:
        return dict(ranks), "GPT-2's own vocabulary"
    previous = -1  # byte tokens' ids do not matter: a byte is never a concatenation
    merged: set[bytes] = set()
    for number, (first, second) in enumerate(vocabulary.merges, start=1):
        token = first + second
        if token in merged:
            return None, f"merge {number} builds {byte_symbol(token)!r} again (two merges, one token)"
        merged.add(token)
        if ranks[token] <= previous:
            return None, f"merge {number} builds id {ranks[token]}, not above the earlier merges' ids"
        previous = ranks[token]
    for number, (first, second) in enumerate(vocabulary.merges, start=1):
        if len(first) + len(second) > 2 and _rank_trajectory_end(first + second, ranks) != [first, second]:
            return None, (f"merge {number} ({byte_symbol(first)!r} {byte_symbol(second)!r}) is not the split "
                          "tiktoken's rule reaches for its token")
    return dict(ranks), "ids rise with merges.txt and every merge is the split tiktoken's rule reaches"
