"""Encode speed of the runtime tokenizer's two backends on one ~1 MB text (indicative; best of 5 rounds).

    python tools/tokenizer_speed.py [--vocab-size 8000]

Trains a ByteLevelBPETokenizer on Python's standard-library sources (as the tests do), then encodes 1 MB of other
stdlib sources with GPT-2's bundled vocabulary (tiktoken) and with the trained one on both tiktoken and Hugging Face
tokenizers, checking both give the same ids.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.tokenizer import ENDOFTEXT, Tokenizer  # noqa: E402
from tests.runtime.trained_tokenizers import train  # noqa: E402


def best_ms(fn, rounds: int = 5) -> float:
    """Fastest of `rounds` calls, in milliseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    """Print one line per vocabulary and backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    stdlib = Path(os.__file__).parent
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("[n-z]*.py")))
    text = text[:1_000_000]
    print(f"text: {len(text.encode()):,} bytes of {stdlib}/[n-z]*.py")
    with tempfile.TemporaryDirectory() as tmp:
        trained = train(Path(tmp), args.vocab_size, [ENDOFTEXT])
        tokenizers = {
            "gpt2 (vocab 50257)": (Tokenizer.gpt2(), None),
            f"trained (vocab {args.vocab_size})": (Tokenizer.from_folder(trained.folder), trained.folder),
        }
        for name, (fast, folder) in tokenizers.items():
            ids = fast.encode(text)
            line = f"{name}: {len(ids):,} tokens; {fast.backend} {best_ms(lambda t=fast: t.encode(text)):.0f} ms"
            if folder is not None:
                slow = Tokenizer.from_folder(folder, backend="tokenizers")
                assert slow.encode(text) == ids, "the backends disagree"
                line += f", tokenizers {best_ms(lambda t=slow: t.encode(text)):.0f} ms"
            print(line)

if __name__ == "__main__":
    main()
