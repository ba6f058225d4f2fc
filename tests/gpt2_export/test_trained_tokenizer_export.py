"""A checkpoint whose tokenizer was trained with Hugging Face tokenizers exports and generates with its ids.

The tokenizer: ByteLevelBPETokenizer(...).train(..., special_tokens=["<|endoftext|>"]) on Python's sources
(<|endoftext|> at id 0, the trainer's byte order, one id per merge), saved beside a random-weight transformers
GPT2LMHeadModel (save_pretrained) as vocab.json + merges.txt, or as tokenizer.json alone. transformers 4.57.6
generates the reference tokens from the ids tokenizers gives; the export must take the same text to the same ids
and tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.tokenizer import ENDOFTEXT
from tests.runtime.trained_tokenizers import UNICODE_TEXT, held_out_texts, train

tokenizers = pytest.importorskip("tokenizers")

PROMPTS = ["def parse(self, text):\n    return", "The license grants", "日本語 🙂 café", "    \n\n\tx = [1, 2]"]


def _checkpoint(folder, layout: str, vocab_size: int = 700, model_vocab: int | None = None):
    """A trained tokenizer and a random-weight GPT-2 (eos = bos = <|endoftext|> = id 0) saved in one folder."""
    import torch
    import transformers

    trained = train(folder, vocab_size, [ENDOFTEXT], layout=layout)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    n_vocab = trained.hf.get_vocab_size() if model_vocab is None else model_vocab
    config = transformers.GPT2Config(vocab_size=n_vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0, initializer_range=0.4)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0.0, 0.5)  # clear-cut greedy choices
    model.save_pretrained(folder)
    return trained, model


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["vocab+merges", "tokenizer.json"])
def test_a_tokenizers_trained_checkpoint_exports_and_generates_with_its_ids(tmp_path, layout):
    import torch

    import runtime
    from gpt2_export.export import ExportOptions, export

    trained, hf_model = _checkpoint(tmp_path / "checkpoint", layout)
    result = export(trained.folder, tmp_path / "out", ExportOptions())  # validates the graph against the model
    assert result.validation is not None and result.validation.passed
    expected_files = ["vocab.json", "merges.txt"] if layout == "vocab+merges" else ["tokenizer.json"]
    assert result.manifest.tokenizer_files == expected_files
    model = runtime.load(tmp_path / "out")
    assert model.tokenizer.eos_token_id == 0 and model.tokenizer.backend == "tiktoken"
    for name, text in held_out_texts().items():
        assert model.tokenizer.encode(text) == trained.hf.encode(text).ids, name
    continuations = []
    for prompt in PROMPTS:
        ids = trained.hf.encode(prompt).ids
        assert model.tokenizer.encode(prompt) == ids
        theirs = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
        ours = model.generate(np.array([ids]), max_new_tokens=12)[0, len(ids):].tolist()
        assert ours == theirs, prompt
        continuations.append(tuple(ours))
        kept = ours[: ours.index(0)] if 0 in ours else ours
        assert model.generate_text(prompt, max_new_tokens=12) == trained.hf.decode(kept), prompt
        stream = "".join(model.stream(prompt, max_new_tokens=12))
        assert stream == model.generate_text(prompt, max_new_tokens=12)
    assert len(set(continuations)) > 2  # the continuations depend on the prompt
    # onnxruntime-genai's tokenizer.json: rewritten from the same vocabulary, it encodes like the trained one.
    written = tokenizers.Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    for text in [*PROMPTS, UNICODE_TEXT]:
        assert written.encode(text).ids == trained.hf.encode(text).ids
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == ENDOFTEXT
    try:
        import onnxruntime_genai as og
    except ImportError:
        return  # the genai run itself is tests/gpt2_export/test_genai.py's, where it is installed
    genai_tokenizer = og.Tokenizer(og.Model(str(tmp_path / "out")))
    for text in [*PROMPTS, UNICODE_TEXT]:
        assert genai_tokenizer.encode(text).tolist() == trained.hf.encode(text).ids, text


def test_a_tokenizer_with_ids_past_the_models_vocab_size_is_refused_at_export(tmp_path):
    from gpt2_export.export import ExportOptions, export

    trained, _ = _checkpoint(tmp_path / "checkpoint", "vocab+merges", vocab_size=700, model_vocab=600)
    message = (r"the tokenizer has ids up to 699 but config.json's vocab_size is 600, so the model has no embedding "
               r"for 100 of them \(600, 601, .*resize_token_embeddings")
    with pytest.raises(ValueError, match=message):
        export(trained.folder, tmp_path / "out", ExportOptions())
