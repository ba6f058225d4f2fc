"""Where the reference model comes from: a local Hugging Face folder, a cached hub id, or the offline default.

The offline default is a GPT-2-small-shaped model with random weights (seeded, so runs repeat); every
caller is told plainly that its text is meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import models
from runtime.tokenizer import Tokenizer, TokenizerNotFoundError

DEFAULT_PRESET = "gpt2"
DEFAULT_SEED = 0


@dataclass
class ReferenceModel:
    """A loaded PyTorch model, its tokenizer, and a one-line description of where both came from."""

    model: models.GPT2PreTrainedModel
    tokenizer: Tokenizer
    source: str
    folder: Path | None
    random_weights: bool


def load_reference(
    model: str | None, head_class: type[models.GPT2PreTrainedModel] = models.GPT2LMHeadModel, **config_overrides
) -> ReferenceModel:
    """Load `model` (folder or hub id) as `head_class`, or build the random-weight GPT-2 small default."""
    if model is None:
        torch.manual_seed(DEFAULT_SEED)
        config = models.GPT2Config.from_preset(DEFAULT_PRESET, **config_overrides)
        built = head_class(config).eval()
        source = f"{DEFAULT_PRESET}-shaped model with RANDOM weights (seed {DEFAULT_SEED}; no --model given)"
        return ReferenceModel(built, Tokenizer.gpt2(), source, None, random_weights=True)
    loaded = head_class.from_pretrained(model, **config_overrides)
    folder = getattr(loaded, "source_folder", None)
    folder = Path(folder) if folder is not None else (Path(model) if Path(model).is_dir() else None)
    try:
        tokenizer = Tokenizer.from_folder(folder) if folder is not None else Tokenizer.gpt2()
        tok_source = "its own vocabulary"
        if folder is not None:  # the checkpoint's own must fit; small configs fall back to GPT-2's, as before
            check_tokenizer_fits(tokenizer, loaded.config.vocab_size, folder)
    except TokenizerNotFoundError:
        tokenizer, tok_source = Tokenizer.gpt2(), "the bundled GPT-2 vocabulary"
    return ReferenceModel(loaded, tokenizer, f"{model} (tokenizer: {tok_source})", folder, random_weights=False)


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int, where: str | Path) -> None:
    """Refuse a tokenizer with ids the model has no embedding (nor logit) for; a smaller vocabulary is fine."""
    if tokenizer.vocab_size > vocab_size:
        past = sorted(i for i in range(vocab_size, tokenizer.vocab_size) if i not in tokenizer.unassigned_ids)
        named = {token_id: text for text, token_id in tokenizer.added_tokens.items()}
        shown = ", ".join(f"{i} ({named[i]!r})" if i in named else str(i) for i in past[:5])
        raise ValueError(
            f"{where}: the tokenizer has ids up to {tokenizer.vocab_size - 1} but config.json's vocab_size is "
            f"{vocab_size}, so the model has no embedding for {len(past)} of them ({shown}"
            f"{', ...' if len(past) > 5 else ''}): resize the model to the tokenizer "
            "(transformers' model.resize_token_embeddings(len(tokenizer))) and save it again, or use the tokenizer "
            "it was trained with"
        )
