"""genai_config.json and a Hugging Face tokenizer.json beside an LM export, so onnxruntime-genai runs the folder.

    import onnxruntime_genai as og
    model = og.Model("exports/gpt2")          # reads genai_config.json, model.onnx, tokenizer.json

References: onnxruntime-genai's configuration reference (docs/genai/reference/config) and its model builder
(`onnxruntime_genai/models/builders/base.py`, `make_genai_config`) for the schema; Hugging Face tokenizers'
`tokenizer.json` as `GPT2TokenizerFast.save_pretrained` writes it for the tokenizer files.

Our graphs use Optimum's I/O names (`past_key_values.{i}.key` -> `present.{i}.key`, input_ids / attention_mask /
position_ids), which genai's generic `"decoder"` model type takes as name templates; its `"gpt2"` type wants the
old stacked `past_{i}` layout instead. `past_present_share_buffer` is true only for `--kv-cache shared` exports,
whose GroupQueryAttention writes the cache in place in (B, nh, max_length, hs) buffers, the layout genai then
allocates; growing-cache graphs (MultiHeadAttention, or the plain traced graph) get past (B, nh, P, hs) and
return present (B, nh, P + T, hs), which is genai's default.

What holds for our exports (checked by tests/gpt2_export/test_genai.py): batch 1, and batches of equal-length
prompts given with `set_search_options(batch_size=B)`, give our greedy tokens exactly. genai feeds every input
token as real (attention_mask all ones), so left-padded ragged batches attend to their padding: run prompts of
different lengths one per generator, or through `runtime` / `gpt2-export serve`, which never pad.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.bpe_vocab import (
    ADDED_TOKENS,
    ENDOFTEXT,
    TOKENIZER_JSON,
    BPEVocabulary,
    byte_symbol,
    parse_tiktoken,
    read_bpe_files,
    read_tokenizer_json,
    vocab_and_merges,
)
from runtime.manifest import Manifest

GENAI_CONFIG = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"

# Each past/present tensor of layer i, as genai's name templates; the graph's names are exactly these.
DECODER_INPUTS = {
    "input_ids": "input_ids",
    "attention_mask": "attention_mask",
    "position_ids": "position_ids",
    "past_key_names": "past_key_values.%d.key",
    "past_value_names": "past_key_values.%d.value",
}
DECODER_OUTPUTS = {
    "logits": "logits",
    "present_key_names": "present.%d.key",
    "present_value_names": "present.%d.value",
}


def genai_unsupported(manifest: Manifest) -> str | None:
    """Why onnxruntime-genai cannot run this export, or None when it can."""
    if manifest.head != "lm":
        return f"onnxruntime-genai generates text from lm exports only; this folder holds the {manifest.head!r} head"
    heads = set(manifest.shape.num_heads_per_layer or [manifest.shape.n_head])
    if len(heads) > 1:
        return (
            f"the model has pruned heads ({list(manifest.shape.num_heads_per_layer)} per layer): onnxruntime-genai's "
            "decoder allocates the same number of heads in every layer"
        )
    eos = manifest.shape.eos_token_id
    if (eos[0] if isinstance(eos, list) and eos else eos) is None:
        return "the model has no eos_token_id, which onnxruntime-genai needs to stop generating"
    names = set(manifest.io.input_names()) | set(manifest.io.output_names())
    missing = [n for n in (*DECODER_INPUTS.values(), *DECODER_OUTPUTS.values()) if "%d" not in n and n not in names]
    if missing:
        return f"the graph lacks the inputs/outputs {missing} that genai's decoder feeds and reads"
    return None


def genai_config(manifest: Manifest) -> dict[str, Any]:
    """The genai_config.json of an LM export: the generic decoder type with our names, greedy search defaults."""
    reason = genai_unsupported(manifest)
    if reason is not None:
        raise ValueError(f"cannot write {GENAI_CONFIG}: {reason}")
    shape = manifest.shape
    eos = shape.eos_token_id
    first_eos = eos[0] if isinstance(eos, list) else eos
    if first_eos is None:
        raise ValueError(f"cannot write {GENAI_CONFIG}: the model has no eos_token_id, which genai needs to stop")
    pad = shape.pad_token_id if shape.pad_token_id is not None else first_eos
    bos = shape.bos_token_id if shape.bos_token_id is not None else first_eos
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": shape.n_positions,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": manifest.model_file,
                "head_size": shape.head_dim,
                "hidden_size": shape.n_embd,
                "inputs": dict(DECODER_INPUTS),
                "outputs": dict(DECODER_OUTPUTS),
                "num_attention_heads": shape.n_head,
                "num_hidden_layers": shape.n_layer,
                "num_key_value_heads": shape.n_head,  # GPT-2 has no grouped heads: one KV head per query head
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": "decoder",
            "vocab_size": shape.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": shape.n_positions,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # Only GroupQueryAttention's in-place cache has the (B, nh, max_length, hs) past == present buffers.
            "past_present_share_buffer": manifest.kv_cache == "shared",
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }


# ---- tokenizer.json ------------------------------------------------------------------------------------------


def _vocab_from_tiktoken(path: Path) -> tuple[dict[str, int], list[str], dict[str, int]]:
    """vocab, merges and added tokens recovered from a `*.tiktoken` ranks file (every merge is the two parts
    BPE reaches for a token with the lower ranks only)."""
    ranks = parse_tiktoken(path.read_bytes(), str(path))
    vocab, merges = vocab_and_merges(ranks, path)
    return vocab, merges, {ENDOFTEXT: len(ranks)}


def _vocab_from_runtime_files(folder: Path) -> tuple[dict[str, int], list[str], dict[str, int], BPEVocabulary]:
    """vocab, merges and added tokens of the folder's vocab.json + merges.txt (+ added_tokens.json) or tokenizer.json,
    read and checked by the runtime's reader, so genai's tokenizer.json holds what the runtime runs."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        added = folder / ADDED_TOKENS
        vocabulary = read_bpe_files(folder / "vocab.json", folder / "merges.txt", added if added.is_file() else None)
    else:
        vocabulary = read_tokenizer_json(folder / TOKENIZER_JSON)
    vocab = {byte_symbol(token): token_id for token, token_id in vocabulary.tokens.items()}
    merges = [f"{byte_symbol(a)} {byte_symbol(b)}" for a, b in vocabulary.merges or ()]
    return vocab, merges, dict(vocabulary.added), vocabulary


def tokenizer_files(folder: str | Path, manifest: Manifest) -> dict[str, dict[str, Any]] | None:
    """tokenizer.json and tokenizer_config.json (Hugging Face's GPT2TokenizerFast format) for the folder's
    vocab.json + merges.txt, tokenizer.json or *.tiktoken (the runtime's order); None when the folder has none."""
    folder = Path(folder)
    add_prefix_space = ignore_merges = False
    if ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (folder / TOKENIZER_JSON).is_file():
        vocab, merges, added, vocabulary = _vocab_from_runtime_files(folder)
        add_prefix_space, ignore_merges = vocabulary.add_prefix_space, vocabulary.ignore_merges
    else:
        ranks = sorted(folder.glob("*.tiktoken"))
        if len(ranks) != 1:
            return None
        vocab, merges, added = _vocab_from_tiktoken(ranks[0])
    byte_level = {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": True, "special": True}
            for token, token_id in sorted(added.items(), key=lambda item: item[1])
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": {**vocab, **added},
            "merges": merges,
        },
    }
    eos_text = ENDOFTEXT if ENDOFTEXT in added else None
    config = {
        "add_bos_token": False,
        "add_prefix_space": add_prefix_space,
        "bos_token": eos_text,
        "eos_token": eos_text,
        "unk_token": eos_text,
        "clean_up_tokenization_spaces": False,
        "model_max_length": manifest.shape.n_positions,
        "tokenizer_class": "GPT2Tokenizer",
    }
    return {TOKENIZER_JSON: tokenizer, TOKENIZER_CONFIG: config}


def write_genai_config(folder: str | Path, manifest: Manifest | None = None) -> list[str]:
    """Write genai_config.json (and tokenizer.json + tokenizer_config.json where the export has a vocabulary)
    into an LM export folder; returns the names written. Raises ValueError naming why genai cannot run it."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else Manifest.load(folder)
    files: dict[str, dict[str, Any]] = {GENAI_CONFIG: genai_config(manifest)}
    files.update(tokenizer_files(folder, manifest) or {})
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return list(files)
