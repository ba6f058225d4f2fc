"""Tokenizers trained with Hugging Face tokenizers run in runtime.Tokenizer with exactly tokenizers' ids and text.

The oracle is the trained `tokenizers.Tokenizer` itself. Vocabularies of 300 to 8k ids, special tokens first (the
trainer's layout: <|endoftext|> at id 0, the 256 byte symbols in the trainer's order, then one id per merge) and
last, added tokens, add_prefix_space, saved as vocab.json + merges.txt (+ added_tokens.json) or tokenizer.json; both
backends (tiktoken, tokenizers) are compared token for token on real text none of them was trained on.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from runtime.bpe_vocab import PROVEN_DIGESTS, read_bpe_files, tiktoken_ranks, vocabulary_digest
from runtime.tokenizer import ENDOFTEXT, Tokenizer
from tests.runtime.trained_tokenizers import UNICODE_TEXT, held_out_texts, train

tokenizers = pytest.importorskip("tokenizers")

# name: (vocab_size, special tokens trained first, keyword arguments of train())
CONFIGS = {
    "300-special-first": (300, [ENDOFTEXT], {}),
    "1k-special-first": (1000, [ENDOFTEXT], {}),
    "8k-special-first": (8000, [ENDOFTEXT], {}),
    "2k-specials-first-and-last": (2000, [ENDOFTEXT, "<pad>"], {"specials_last": ["<|im_end|>"],
                                                                   "layout": "tokenizer.json"}),
    "1k-no-special-then-added": (1000, [], {"specials_last": [ENDOFTEXT], "added_tokens": ["<|user|>", "wörd"]}),
    "1k-prefix-space": (1000, [ENDOFTEXT], {"add_prefix_space": True, "layout": "tokenizer.json"}),
}


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    """Held-out real text (source code, license, /usr/share/doc, unicode), about 150k characters."""
    return held_out_texts()


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request, tmp_path_factory):
    """One trained tokenizer per configuration, saved to its own folder."""
    vocab_size, specials, kwargs = CONFIGS[request.param]
    return train(tmp_path_factory.mktemp(request.param), vocab_size, specials, **kwargs)


def shown(ours: Tokenizer, text: str) -> str:
    """What decode(encode(text)) gives: text, behind a space where the tokenizer adds a prefix space."""
    return " " + text if ours.vocabulary.add_prefix_space and not text.startswith(" ") else text


def plain_oracle(trained) -> tokenizers.Tokenizer:
    """The trained tokenizer without its added tokens: what our policy (special text is plain text) asks for."""
    oracle = tokenizers.Tokenizer.from_str(trained.hf.to_str())
    data = json.loads(oracle.to_str())
    data["added_tokens"] = []
    return tokenizers.Tokenizer.from_str(json.dumps(data))


@pytest.mark.parametrize("backend", [None, "tokenizers"])
def test_encode_gives_tokenizers_ids_on_real_text(trained, texts, backend):
    ours = Tokenizer.from_folder(trained.folder, backend=backend)
    oracle = trained.hf
    for name, text in texts.items():
        expected = oracle.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == expected, name
        assert ours.decode(expected) == oracle.decode(expected, skip_special_tokens=False) == shown(ours, text), name
    # Merges must fire, or equality proves little: real text takes far fewer tokens than bytes.
    assert len(ours.encode(texts["code"])) < 0.8 * len(texts["code"].encode())


def test_trained_vocabularies_run_on_tiktoken_and_the_ids_are_the_vocabularys(trained):
    ours = Tokenizer.from_folder(trained.folder)
    assert ours.backend == "tiktoken", ours  # ids rise with the merges: tiktoken's rule is proven exact
    assert ours.vocab_size == trained.hf.get_vocab_size(with_added_tokens=True)
    for token, token_id in trained.hf.get_vocab(with_added_tokens=True).items():
        if token in trained.special_tokens or token in trained.added_tokens:
            assert ours.decode([token_id]) == token
            assert ours.added_tokens[token] == token_id
    assert ours.eos_token_id == trained.hf.token_to_id(ENDOFTEXT)


def test_special_token_text_is_plain_text_and_tokenizers_agrees_piece_by_piece(trained):
    ours = Tokenizer.from_folder(trained.folder)
    specials = [*trained.special_tokens, *trained.added_tokens]
    text = f"{specials[0]}Hello{specials[-1]} world, {specials[0]} def f(x):\n    return x{specials[0]}"
    ids = ours.encode(text)
    assert not set(ids) & set(ours.added_tokens.values())  # never produced from text
    assert ids == plain_oracle(trained).encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == shown(ours, text)
    # tokenizers itself splits on its added tokens; so do we when the text is cut at them and their ids fed.
    split = re.split("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")", text)
    pieced = [i for piece in split if piece for i in
              ([ours.added_tokens[piece]] if piece in specials else ours.encode(piece))]
    assert pieced == trained.hf.encode(text, add_special_tokens=False).ids


def test_decode_and_stream_match_tokenizers_on_random_ids(trained):
    """Random ids (many lone bytes, so invalid UTF-8) decode to tokenizers' text, streamed or not."""
    ours = Tokenizer.from_folder(trained.folder)
    rng = random.Random(0)
    ascii_specials = [i for t, i in ours.added_tokens.items() if t.isascii() and " " not in t]
    # tokenizers runs added tokens through its ByteLevel decoder too, so "wörd" (ö is byte 0xF6's symbol there)
    # comes back as "w\ufffdrd"; we decode an added token to its own text, as transformers' GPT2Tokenizer does.
    others = {i for t, i in ours.added_tokens.items() if not (t.isascii() and " " not in t)}
    for token in trained.added_tokens:
        assert ours.decode([ours.added_tokens[token]]) == token
    for _ in range(300):
        ids = [rng.choice([rng.randrange(ours.vocab_size), *ascii_specials]) for _ in range(rng.randrange(1, 16))]
        ids = [i for i in ids if i not in ours.unassigned_ids and i not in others]
        text = ours.decode(ids)
        assert text == trained.hf.decode(ids, skip_special_tokens=False), ids
        stream = ours.stream_decoder()
        assert "".join(stream.feed(i) for i in ids) + stream.flush() == text


def test_streamed_decoding_of_unicode_never_breaks_a_character(trained):
    ours = Tokenizer.from_folder(trained.folder)
    ids = ours.encode(UNICODE_TEXT)
    stream = ours.stream_decoder()
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces[:-1]  # some token ended mid-character, so the hold-back was exercised
    expected = trained.hf.decode(trained.hf.encode(UNICODE_TEXT).ids)
    assert "".join(pieces) == expected == (" " + UNICODE_TEXT if ours.vocabulary.add_prefix_space else UNICODE_TEXT)


def test_vocab_json_and_tokenizer_json_of_one_tokenizer_load_the_same(tmp_path, texts):
    trained = train(tmp_path / "both", 1500, [ENDOFTEXT])
    (tmp_path / "json-only").mkdir()
    trained.hf.save(str(tmp_path / "json-only" / "tokenizer.json"))
    from_files, from_json = Tokenizer.from_folder(trained.folder), Tokenizer.from_folder(tmp_path / "json-only")
    assert from_files.vocabulary.tokens == from_json.vocabulary.tokens
    assert from_files.vocabulary.merges == from_json.vocabulary.merges
    assert from_files.added_tokens == from_json.added_tokens == {ENDOFTEXT: 0}
    assert from_json.encode(texts["code-2"]) == from_files.encode(texts["code-2"])


def test_the_error_of_issue_14_is_gone(tmp_path):
    """`added token '<|endoftext|>' has id 0, which merges.txt already gives to a BPE token` no more."""
    trained = train(tmp_path / "t", 400, [ENDOFTEXT])
    vocab = json.loads((trained.folder / "vocab.json").read_text(encoding="utf-8"))
    assert vocab[ENDOFTEXT] == 0 and vocab["!"] == 1  # the trainer's layout, not GPT-2's byte order
    ours = Tokenizer.from_folder(trained.folder)
    assert ours.eos_token_id == 0 and ours.decode([0]) == ENDOFTEXT


# ---- when tiktoken's rule differs from the merge list's -------------------------------------------------------


def _write(folder: Path, vocab: dict[str, int], merges: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def _counterexample(folder: Path) -> Path:
    """Merges (b c), (a b), (ab c): tiktoken joins a + bc into the token abc, which no merge builds that way."""
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    for token in ("bc", "ab", "abc"):
        vocab[token] = len(vocab)
    return _write(folder, vocab, ["b c", "a b", "ab c"])


def test_a_vocabulary_where_tiktoken_would_differ_runs_on_tokenizers(tmp_path):
    folder = _counterexample(tmp_path / "c")
    oracle = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(folder / "vocab.json"),
                                                                  str(folder / "merges.txt")))
    oracle.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ours = Tokenizer.from_folder(folder)
    assert ours.backend == "tokenizers"
    vocabulary = ours.vocabulary
    for text in ["abc", "xabcabc abc", "ab bc abcc"]:
        assert ours.encode(text) == oracle.encode(text).ids
    # The check is not idle: tiktoken on the same ids would give other tokens.
    import tiktoken

    from runtime.tokenizer import GPT2_PATTERN

    raw = tiktoken.Encoding("raw", pat_str=GPT2_PATTERN, mergeable_ranks=vocabulary.tokens, special_tokens={})
    assert raw.encode_ordinary("xabc") != oracle.encode("xabc").ids
    with pytest.raises(ValueError, match=r"cannot run on tiktoken exactly: merge 3 \('ab' 'c'\) is not the split"):
        Tokenizer.from_folder(folder, backend="tiktoken")


def test_ids_that_do_not_rise_with_the_merges_run_on_tokenizers(tmp_path, texts):
    trained = train(tmp_path / "t", 600, [ENDOFTEXT])
    vocab = json.loads((trained.folder / "vocab.json").read_text(encoding="utf-8"))
    # Reverse the merged tokens' ids: same tokens, same merge order, ids no longer in merge order.
    merged = sorted((i for t, i in vocab.items() if i > 256))
    remap = dict(zip(merged, reversed(merged), strict=True))
    vocab = {t: remap.get(i, i) for t, i in vocab.items()}
    folder = tmp_path / "shuffled"
    shutil.copytree(trained.folder, folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    ours = Tokenizer.from_folder(folder)
    assert ours.backend == "tokenizers"
    oracle = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(folder / "vocab.json"),
                                                                  str(folder / "merges.txt")))
    oracle.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    oracle.decoder = tokenizers.decoders.ByteLevel()
    text = texts["code-2"][:20_000]
    assert ours.encode(text) == oracle.encode(text).ids
    assert ours.decode(ours.encode(text)) == text


def test_gpt2s_own_vocabulary_as_vocab_json_is_proven_not_just_known(tmp_path):
    from importlib import resources

    from gpt2_export.genai import _vocab_from_tiktoken
    from runtime.tokenizer import GPT2_RANKS_RESOURCE

    source = tmp_path / "gpt2.tiktoken"
    source.write_bytes((resources.files("runtime") / GPT2_RANKS_RESOURCE).read_bytes())
    vocab, merges, added = _vocab_from_tiktoken(source)
    folder = _write(tmp_path / "gpt2", {**vocab, **added}, merges)
    vocabulary = read_bpe_files(folder / "vocab.json", folder / "merges.txt")
    assert vocabulary_digest(vocabulary) in PROVEN_DIGESTS
    proven, why = tiktoken_ranks(vocabulary.__class__(vocabulary.tokens, vocabulary.merges, {}, "no-shortcut",
                                                      add_prefix_space=False))
    assert proven is not None, why  # the full check passes too (the digest only saves its time)
    ours, bundled = Tokenizer.from_folder(folder), Tokenizer.gpt2()
    assert ours.backend == "tiktoken"
    text = held_out_texts()["code"]
    assert ours.encode(text) == bundled.encode(text)


# ---- what is refused, and how ---------------------------------------------------------------------------------


def _tokenizer_json(tmp_path: Path, edit) -> Path:
    trained = train(tmp_path / "base", 300, [ENDOFTEXT], layout="tokenizer.json")
    data = json.loads((trained.folder / "tokenizer.json").read_text(encoding="utf-8"))
    edit(data)
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "has a 'Lowercase' normalizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁"}), "pre_tokenizer is 'Metaspace'"),
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {
        "type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]}), r"\['Digits', 'ByteLevel'\]"),
    (lambda d: d.update(post_processor={"type": "TemplateProcessing", "single": [], "pair": [],
                                        "special_tokens": {}}), "post_processor is 'TemplateProcessing'"),
    (lambda d: d.update(decoder=None), "has no ByteLevel decoder"),
    (lambda d: d["model"].update(byte_fallback=True), "model.byte_fallback is True"),
    (lambda d: d["model"].update(type="WordPiece"), "model type is 'WordPiece', not 'BPE'"),
    (lambda d: d["model"]["vocab"].pop("Ā"), "lacks 1 of the 256 byte symbols"),
])
def test_tokenizer_json_that_is_not_byte_level_bpe_is_refused_by_name(tmp_path, edit, message):
    folder = _tokenizer_json(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_folder(folder)


def test_ignore_merges_in_tokenizer_json_is_followed_where_it_matters(tmp_path):
    """tokenizers' BPE(ignore_merges=True) takes a piece that is a token whole, merges or not."""
    folder = _counterexample(tmp_path / "c")
    model = tokenizers.models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"), ignore_merges=True)
    oracle = tokenizers.Tokenizer(model)
    oracle.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    oracle.decoder = tokenizers.decoders.ByteLevel()
    (tmp_path / "json").mkdir()
    oracle.save(str(tmp_path / "json" / "tokenizer.json"))
    ours = Tokenizer.from_folder(tmp_path / "json")
    assert ours.vocabulary.ignore_merges and ours.backend == "tokenizers"
    assert oracle.encode("abc").ids == [ours.vocabulary.tokens[b"abc"]]  # whole, though no merge path builds it
    for text in ["abc", "xabc abc", "abcc bc"]:
        assert ours.encode(text) == oracle.encode(text).ids


def test_lone_surrogates_encode_alike_on_both_backends(tmp_path):
    trained = train(tmp_path / "t", 500, [ENDOFTEXT])
    fast, slow = Tokenizer.from_folder(trained.folder), Tokenizer.from_folder(trained.folder, backend="tokenizers")
    text = "a\ud800b \udfff end"
    assert fast.encode(text) == slow.encode(text)
    assert slow.decode(slow.encode(text)) == "a\ufffdb \ufffd end"
