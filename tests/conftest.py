"""Shared test setup: environment defaults and fixtures that build small artifacts in-process."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

# transformers imports TensorFlow whenever it is installed (the `tensorflow` extra), which is slow and
# noisy; tests that want TensorFlow import it themselves. Set before any test module imports transformers.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Text the tiny vocabulary is trained on: repeated words so merges form, plus accented letters, CJK and
# emoji so some merges join bytes of one multi-byte character.
TINY_BPE_CORPUS = (
    "the cat sat on the mat. the dog sat on the log. there is the theme of this thesis. "
    "héllo wörld, héllo café! naïve café. 日本語の日本 日本. "
    "🙂🙂 smile 🙂 and 🎉 party 🎉 🎉. it's what we've said, they're here, I'll go. 1234 1234 42"
) * 3
TINY_BPE_MERGES = 60
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, written out independently of runtime/."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def train_tiny_bpe(corpus: str, n_merges: int) -> list[tuple[str, str]]:
    """Learn n_merges byte-level BPE merges greedily, in GPT-2's character alphabet."""
    import regex  # a transformers dependency, so present wherever the test extra is

    table = gpt2_bytes_to_unicode()
    words = Counter(
        tuple(table[b] for b in piece.encode("utf-8")) for piece in regex.findall(GPT2_PATTERN, corpus)
    )
    merges: list[tuple[str, str]] = []
    tokens = set(table.values())
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        # Most frequent first, ties broken by the pair itself so the vocabulary is deterministic; a pair
        # whose concatenation is already a token would give two merges one token, which GPT-2 never has.
        candidates = sorted((p for p in pairs if p[0] + p[1] not in tokens), key=lambda p: (-pairs[p], p))
        if not candidates:
            break
        first, second = candidates[0]
        merges.append((first, second))
        tokens.add(first + second)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def write_bpe_folder(folder: Path, merges: list[tuple[str, str]]) -> Path:
    """Write vocab.json + merges.txt exactly as GPT-2 checkpoints lay them out."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {char: i for i, char in enumerate(gpt2_bytes_to_unicode().values())}
    for first, second in merges:
        vocab[first + second] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny_bpe_merges() -> list[tuple[str, str]]:
    """The merges of the tiny vocabulary, in rank order."""
    return train_tiny_bpe(TINY_BPE_CORPUS, TINY_BPE_MERGES)


@pytest.fixture
def tiny_bpe_folder(tmp_path: Path, tiny_bpe_merges: list[tuple[str, str]]) -> Path:
    """A folder with a tiny GPT-2-format vocabulary: 256 bytes, 60 merges, then <|endoftext|> (id 316)."""
    return write_bpe_folder(tmp_path / "tiny-bpe", tiny_bpe_merges)


# ---- checkpoints written by transformers (the oracle) ----------------------------------------------

TINY_MODEL = dict(
    vocab_size=317,
    n_positions=64,
    n_embd=32,
    n_layer=2,
    n_head=4,
    bos_token_id=316,
    eos_token_id=316,
)

HF_HEAD_CLASSES = {
    "base": "GPT2Model",
    "lm": "GPT2LMHeadModel",
    "double-heads": "GPT2DoubleHeadsModel",
    "seq-cls": "GPT2ForSequenceClassification",
}


def write_hf_checkpoint(folder: Path, head: str = "lm", seed: int = 0, **overrides) -> Path:
    """Save a random-weight transformers model of `head` with the tiny vocabulary beside it."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    # A wide initialisation makes attention (and so the KV cache) decide the tokens: with GPT-2's 0.02 a tiny
    # model's next token depends almost only on the current one, and a broken cache would go unnoticed.
    config = transformers.GPT2Config(**{**TINY_MODEL, "initializer_range": 0.2, **overrides})
    model = getattr(transformers, HF_HEAD_CLASSES[head])(config).eval()
    # Random weights give near-uniform logits; a larger wte spread makes greedy choices clear-cut.
    with torch.no_grad():
        model.base_model.wte.weight.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    write_bpe_folder(folder, train_tiny_bpe(TINY_BPE_CORPUS, TINY_BPE_MERGES))
    return folder


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One transformers-written checkpoint per exportable head (seq-cls with 3 labels and a pad id)."""
    root = tmp_path_factory.mktemp("hf-checkpoints")
    return {
        "base": write_hf_checkpoint(root / "base", "base"),
        "lm": write_hf_checkpoint(root / "lm", "lm"),
        "double-heads": write_hf_checkpoint(root / "double-heads", "double-heads"),
        "seq-cls": write_hf_checkpoint(root / "seq-cls", "seq-cls", num_labels=3, pad_token_id=316),
    }


@pytest.fixture(scope="session")
def exports(hf_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Validated export folders of the tiny checkpoints: every head, and the lm's plain / in-place / fp16 variants."""
    from gpt2_export.export import ExportOptions, export

    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for head in ("lm", "seq-cls", "double-heads"):
        folders[head] = export(hf_checkpoints[head], root / head, ExportOptions(head=head)).folder
    folders["lm-fp16"] = export(hf_checkpoints["lm"], root / "lm-fp16", ExportOptions(dtype="fp16")).folder
    folders["lm-plain"] = export(hf_checkpoints["lm"], root / "lm-plain", ExportOptions(variant="plain")).folder
    folders["lm-shared"] = export(hf_checkpoints["lm"], root / "lm-shared", ExportOptions(kv_cache="shared")).folder
    return folders
