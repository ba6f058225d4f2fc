"""Byte-level BPE tokenizers trained with Hugging Face tokenizers on real text found on this machine (the oracle).

Training text: Python's own standard-library sources and the documentation topics it ships (pydoc_data), so every
machine with Python has it; the texts the tests encode come from other files than the ones trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

STDLIB = Path(os.__file__).parent
ENDOFTEXT = "<|endoftext|>"
# Text no training file holds: CJK, emoji (with joiners and modifiers), accents, unicode spaces, long runs.
UNICODE_TEXT = (
    "日本語の文章と中文的句子，한국어 문장. Ελληνικά, русский текст, עברית, العربية.\n"
    "emoji 🙂🎉 a family 👩\u200d👩\u200d👧 a flag 🇫🇷 skin tones 👍🏽 and ✌️ keycap 1️⃣\n"
    "café naïve résumé Zürich Ærøskøbing ŁÓDŹ\u00a0nbsp\u2003em space\u3000ideographic space\u200bzero width\n"
    "tabs\t\t\tand\r\nwindows lines\r\n" + " " * 40 + "forty spaces then" + "\n" * 7 + "\t \t  \n"
)


def read_text(path: Path) -> str:
    """A file's text (undecodable bytes as U+FFFD)."""
    return path.read_text(encoding="utf-8", errors="replace")


def training_text(limit: int = 400_000) -> str:
    """About `limit` characters of stdlib sources and Python's documentation topics."""
    from pydoc_data.topics import topics

    parts, size = [], 0
    for path in sorted(STDLIB.glob("[a-m]*.py")):
        text = read_text(path)
        parts.append(text)
        size += len(text)
        if size > limit // 2:
            break
    docs = "\n\n".join(topics[name] for name in sorted(topics))
    parts.append(docs[: limit - size])
    return "".join(parts)


def held_out_texts() -> dict[str, str]:
    """Real texts the tokenizers were not trained on: source code, prose, a license, man-page-like docs, unicode."""
    texts = {
        "code": read_text(STDLIB / "typing.py")[:60_000],
        "code-2": read_text(STDLIB / "tarfile.py")[:30_000],
        "license": read_text(STDLIB / "LICENSE.txt") if (STDLIB / "LICENSE.txt").is_file() else "",
        "unicode": UNICODE_TEXT * 3,
    }
    docs = sorted(Path("/usr/share/doc").glob("*/copyright"))[:40]
    texts["usr-share-doc"] = "\n".join(read_text(p) for p in docs)[:40_000]
    return {name: text for name, text in texts.items() if text}


@dataclass
class Trained:
    """A trained tokenizer, the folder it was saved to, and how."""

    hf: object  # tokenizers.Tokenizer, the oracle (with its added / special tokens)
    folder: Path
    special_tokens: list[str] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)


def train(folder: Path, vocab_size: int, special_tokens: list[str], *, add_prefix_space: bool = False,
          added_tokens: list[str] = (), specials_last: list[str] = (), text: str | None = None,
          layout: str = "vocab+merges") -> Trained:
    """Train ByteLevelBPETokenizer(...).train(special_tokens=...) and save it as vocab.json + merges.txt
    (+ added_tokens.json, as transformers writes it) or tokenizer.json; `specials_last` and `added_tokens` are added
    after training, so they take the last ids."""
    from tokenizers import ByteLevelBPETokenizer

    text = training_text() if text is None else text
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=add_prefix_space)
    chunks = [text[i : i + 4096] for i in range(0, len(text), 4096)]
    tokenizer.train_from_iterator(chunks, vocab_size=vocab_size, min_frequency=2, special_tokens=special_tokens,
                                  show_progress=False)
    if specials_last:
        tokenizer.add_special_tokens(list(specials_last))
    if added_tokens:
        tokenizer.add_tokens(list(added_tokens))
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "vocab+merges":
        tokenizer.save_model(str(folder))  # the trained vocabulary only; tokens added since go to added_tokens.json
        extra = [*specials_last, *added_tokens]
        if extra:
            ids = {token: tokenizer.token_to_id(token) for token in extra}
            (folder / "added_tokens.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    else:
        tokenizer.save(str(folder / "tokenizer.json"))
    return Trained(tokenizer._tokenizer, folder, [*special_tokens, *specials_last], list(added_tokens))
