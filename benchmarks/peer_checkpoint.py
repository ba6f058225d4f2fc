"""The checkpoint copy the peer converters read: config.json with n_ctx, and GPT-2's vocab.json + merges.txt.

llama.cpp's `convert_hf_to_gguf.py` reads `n_ctx` from config.json (transformers 4.57 writes only n_positions)
and both it and CTranslate2's converter load the tokenizer files, which the benchmark's random-weight default
checkpoint lacks. The copy links the weights (no second copy of them) and writes what is missing: the files
are rebuilt from the bundled tiktoken ranks (runtime/assets/gpt2.tiktoken, r50k_base), every merge being the
two parts BPE reaches for a token with lower ranks only (as tiktoken's educational `bpe` recovers them).
A vocabulary smaller than GPT-2's keeps the first vocab_size - 1 ranks (a prefix of a BPE vocabulary is one
itself: a token's parts always rank below it) and puts <|endoftext|> last, as GPT-2 does at 50256.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

from runtime.bpe_vocab import ENDOFTEXT

TOKENIZER_FILES = ("vocab.json", "merges.txt")


def bundled_ranks() -> dict[bytes, int]:
    """GPT-2's BPE ranks from the runtime's bundled r50k_base file (read and checked by runtime.bpe_vocab)."""
    from runtime.bpe_vocab import parse_tiktoken
    from runtime.tokenizer import GPT2_RANKS_RESOURCE

    data = resources.files("runtime").joinpath(GPT2_RANKS_RESOURCE).read_bytes()
    return parse_tiktoken(data, f"runtime/{GPT2_RANKS_RESOURCE}")


def gpt2_tokenizer_files(vocab_size: int | None = None) -> tuple[dict[str, int], list[str]]:
    """vocab.json's mapping and merges.txt's lines (no header) of GPT-2, cut to vocab_size tokens when smaller."""
    from runtime.bpe_vocab import vocab_and_merges

    ranks = bundled_ranks()
    size = len(ranks) + 1 if vocab_size is None else vocab_size  # + <|endoftext|>
    if size < 257:
        raise ValueError(f"vocab_size {size} cannot hold GPT-2's 256 byte tokens and <|endoftext|>: use >= 257")
    kept = {token: rank for token, rank in ranks.items() if rank < min(size - 1, len(ranks))}
    vocab, merges = vocab_and_merges(kept, f"GPT-2's ranks cut to {size} tokens")
    vocab[ENDOFTEXT] = len(kept)
    return vocab, merges


def write_tokenizer_files(folder: Path, vocab_size: int | None = None) -> None:
    """GPT-2's vocab.json + merges.txt (transformers' layout: a '#version' header, a trailing newline)."""
    vocab, merges = gpt2_tokenizer_files(vocab_size)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def prepare(checkpoint: Path, folder: Path) -> Path:
    """`folder`: the checkpoint's files linked, config.json with n_ctx, tokenizer files (rebuilt when missing)."""
    checkpoint, folder = Path(checkpoint), Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for path in checkpoint.iterdir():
        if path.is_file() and path.name != "config.json":
            os.symlink(path.resolve(), folder / path.name)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    config.setdefault("n_ctx", config["n_positions"])
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if not all((checkpoint / name).is_file() for name in TOKENIZER_FILES):
        for name in TOKENIZER_FILES:  # never a half-linked pair from the checkpoint
            (folder / name).unlink(missing_ok=True)
        write_tokenizer_files(folder, config["vocab_size"])
    return folder
