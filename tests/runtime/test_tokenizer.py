"""Specification of runtime.tokenizer, with transformers' GPT2Tokenizer as the oracle for tokens."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from runtime.tokenizer import ENDOFTEXT, Tokenizer, TokenizerNotFoundError

REPO_ROOT = Path(__file__).resolve().parents[2]
# tiktoken's published hash of r50k_base, the ranks GPT-2 uses.
R50K_BASE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
TEXTS = [
    "the cat sat on the mat.",
    "Hello, world! Unseen WORDS and 12345 numbers.",
    "héllo wörld, naïve café",
    "日本語の日本 and 中文",
    "emoji 🙂🎉 and a family 👩\u200d👩\u200d👧",
    "it's what we've said, they're here, I'll go",
    "  leading spaces,\ttabs\n\nand trailing newline\n",
]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    """The bundled GPT-2 tokenizer, loaded once for the module."""
    return Tokenizer.gpt2()


# --- the bundled GPT-2 vocabulary ---


def test_bundled_gpt2_encodes_hello_world(gpt2: Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.eos_token_id == 50256
    assert gpt2.vocab_size == 50257


def test_bundled_ranks_are_tiktoken_r50k_base() -> None:
    data = resources.files("runtime").joinpath("assets/gpt2.tiktoken").read_bytes()
    assert hashlib.sha256(data).hexdigest() == R50K_BASE_SHA256


def test_special_token_text_is_encoded_as_plain_text(gpt2: Tokenizer) -> None:
    ids = gpt2.encode(f"a{ENDOFTEXT}b")
    assert gpt2.eos_token_id not in ids
    assert gpt2.decode(ids) == f"a{ENDOFTEXT}b"
    assert gpt2.decode([gpt2.eos_token_id]) == ENDOFTEXT


def test_encode_never_raises_on_lone_surrogates(gpt2: Tokenizer) -> None:
    assert gpt2.decode(gpt2.encode("a\ud800b")) == "a\ufffdb"


@pytest.mark.parametrize("text", TEXTS)
def test_bundled_gpt2_round_trips(gpt2: Tokenizer, text: str) -> None:
    assert gpt2.decode(gpt2.encode(text)) == text


# --- vocab.json + merges.txt, checked against transformers ---


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_vocabulary_round_trips(tiny_bpe_folder: Path, text: str) -> None:
    tokenizer = Tokenizer.from_folder(tiny_bpe_folder)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tiny_vocabulary_shape(tiny_bpe_folder: Path) -> None:
    tokenizer = Tokenizer.from_folder(tiny_bpe_folder)
    vocab = json.loads((tiny_bpe_folder / "vocab.json").read_text(encoding="utf-8"))
    assert tokenizer.eos_token_id == vocab[ENDOFTEXT] == 316
    assert tokenizer.vocab_size == len(vocab) == 317
    # Merges must actually fire, or the comparison with transformers below proves little.
    assert len(tokenizer.encode("the cat sat on the mat")) < len("the cat sat on the mat")


@pytest.mark.parametrize("text", TEXTS)
def test_matches_transformers_gpt2_tokenizer(tiny_bpe_folder: Path, text: str) -> None:
    from transformers import GPT2Tokenizer

    oracle = GPT2Tokenizer.from_pretrained(str(tiny_bpe_folder))
    tokenizer = Tokenizer.from_folder(tiny_bpe_folder)
    ids = tokenizer.encode(text)
    assert ids == oracle.encode(text)
    assert tokenizer.decode(ids) == oracle.decode(ids)


def test_matches_transformers_on_the_training_text(tiny_bpe_folder: Path) -> None:
    from transformers import GPT2Tokenizer

    from tests.conftest import TINY_BPE_CORPUS

    oracle = GPT2Tokenizer.from_pretrained(str(tiny_bpe_folder))
    assert Tokenizer.from_folder(tiny_bpe_folder).encode(TINY_BPE_CORPUS) == oracle.encode(TINY_BPE_CORPUS)


def test_ranks_match_tiktoken_data_gym_loader(tiny_bpe_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    # tiktoken caches files it reads by path under the temp dir; "" turns that cache off.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    expected = data_gym_to_mergeable_bpe_ranks(
        str(tiny_bpe_folder / "merges.txt"), str(tiny_bpe_folder / "vocab.json")
    )
    assert Tokenizer.from_folder(tiny_bpe_folder).encoding._mergeable_ranks == expected


def test_merges_without_header_or_final_newline_load_the_same(tiny_bpe_folder: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_bpe_folder, bare)
    lines = (tiny_bpe_folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    (bare / "merges.txt").write_text("\n".join(lines[1:]), encoding="utf-8")
    text = " ".join(TEXTS)
    assert Tokenizer.from_folder(bare).encode(text) == Tokenizer.from_folder(tiny_bpe_folder).encode(text)


def test_added_tokens_in_vocab_json_decode_but_never_encode(tiny_bpe_folder: Path) -> None:
    vocab_path = tiny_bpe_folder / "vocab.json"
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    vocab["<pad>"] = 317
    vocab["<|im_start|>"] = 320  # ids may leave gaps
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = Tokenizer.from_folder(tiny_bpe_folder)
    assert tokenizer.vocab_size == 321
    assert tokenizer.eos_token_id == 316
    assert tokenizer.decode([317, 320, 316]) == f"<pad><|im_start|>{ENDOFTEXT}"
    assert 317 not in tokenizer.encode("<pad>")
    with pytest.raises(ValueError, match="token id 318 is unassigned"):
        tokenizer.decode([318])


def test_tokens_added_by_transformers_decode_like_transformers(tiny_bpe_folder: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2TokenizerFast.from_pretrained(tiny_bpe_folder)
    hf.add_special_tokens({"pad_token": "<|pad|>"})
    hf.add_tokens(["hello_world"])
    hf.save_pretrained(tmp_path / "saved")  # vocab.json keeps 317 tokens; the new ones go to added_tokens.json
    tokenizer = Tokenizer.from_folder(tmp_path / "saved")
    assert tokenizer.vocab_size == len(hf) == 319
    ids = [257, 317, 220, 318, 316, 260]
    assert tokenizer.decode(ids) == hf.decode(ids)
    assert tokenizer.encode("the cat") == hf.encode("the cat")


@pytest.mark.parametrize(("added", "message"), [
    ({"<|pad|>": 5}, "added token '<|pad|>' has id 5; added ids must be integers >= 316"),
    ({"<|endoftext|>": 317}, "'<|endoftext|>' has id 317 but vocab.json gives it 316"),
    ({"a": 317, "b": 317}, "two added tokens share an id"),
])
def test_an_added_tokens_json_that_does_not_fit_is_refused(tiny_bpe_folder: Path, added, message) -> None:
    (tiny_bpe_folder / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_folder(tiny_bpe_folder)


def test_vocab_without_endoftext_gets_the_next_id(tiny_bpe_folder: Path) -> None:
    vocab_path = tiny_bpe_folder / "vocab.json"
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    del vocab[ENDOFTEXT]
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = Tokenizer.from_folder(tiny_bpe_folder)
    assert tokenizer.eos_token_id == 316
    assert tokenizer.decode([316]) == ENDOFTEXT


def test_vocab_and_merges_that_disagree_are_rejected(tiny_bpe_folder: Path) -> None:
    merges_path = tiny_bpe_folder / "merges.txt"
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    first, second = ("".join(line.split()) for line in lines[1:3])
    lines.append(f"{first} {second}")  # two tokens vocab.json has, building one it does not
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"needs token '{first}{second}', which .*vocab.json lacks: .*do not belong"):
        Tokenizer.from_folder(tiny_bpe_folder)


def test_merge_priority_comes_from_merges_txt_not_from_the_ids(tiny_bpe_folder: Path) -> None:
    """Swapped merge lines change the merge order but not the ids, which tokenizers loads and follows."""
    tokenizers = pytest.importorskip("tokenizers")
    merges_path = tiny_bpe_folder / "merges.txt"
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    original = Tokenizer.from_folder(tiny_bpe_folder)
    assert original.backend == "tiktoken"
    # "Ġt h" + "e" versus "Ġ the" style conflicts: swapping the first merges changes which pair wins.
    lines[1:] = lines[1:][::-1]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    swapped = Tokenizer.from_folder(tiny_bpe_folder)
    assert swapped.backend == "tokenizers"  # ids no longer rise with the merges: tiktoken's rule would differ
    oracle = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(
        str(tiny_bpe_folder / "vocab.json"), str(merges_path)))
    oracle.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    oracle.decoder = tokenizers.decoders.ByteLevel()
    for text in TEXTS:
        assert swapped.encode(text) == oracle.encode(text).ids, text
        assert swapped.decode(swapped.encode(text)) == text
    assert any(swapped.encode(t) != original.encode(t) for t in TEXTS)  # the order mattered


def test_tiktoken_file_in_a_folder(gpt2: Tokenizer, tmp_path: Path) -> None:
    source = resources.files("runtime").joinpath("assets/gpt2.tiktoken").read_bytes()
    (tmp_path / "r50k_base.tiktoken").write_bytes(source)
    tokenizer = Tokenizer.from_folder(tmp_path)
    assert tokenizer.encode(TEXTS[1]) == gpt2.encode(TEXTS[1])
    assert tokenizer.eos_token_id == 50256


# --- streaming decode ---


@pytest.mark.parametrize("text", ["Hello 🙂 世界, café 🎉👩\u200d👩\u200d👧!", "日本語の日本 🙂🙂"])
def test_stream_decoder_never_emits_a_broken_character(gpt2: Tokenizer, text: str) -> None:
    ids = gpt2.encode(text)
    stream = gpt2.stream_decoder()
    pieces = [stream.feed(i) for i in ids]
    pieces.append(stream.flush())
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces[:-1], "expected some token to end mid-character (else the test proves nothing)"
    assert "".join(pieces) == gpt2.decode(ids) == text


def test_stream_decoder_on_tiny_vocabulary(tiny_bpe_folder: Path) -> None:
    tokenizer = Tokenizer.from_folder(tiny_bpe_folder)
    text = "🙂 smile 日本 and 😀"
    ids = tokenizer.encode(text)
    stream = tokenizer.stream_decoder()
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text


def test_stream_decoder_matches_decode_on_random_ids(gpt2: Tokenizer) -> None:
    # Random ids, many of them single bytes, produce invalid UTF-8: the replacement must match too.
    rng = random.Random(0)
    for _ in range(200):
        ids = [
            rng.choice([rng.randrange(256), rng.randrange(gpt2.vocab_size)]) for _ in range(rng.randrange(12))
        ]
        stream = gpt2.stream_decoder()
        streamed = "".join(stream.feed(i) for i in ids) + stream.flush()
        assert streamed == gpt2.decode(ids), ids


def test_stream_flush_replaces_an_unfinished_character_and_resets(gpt2: Tokenizer) -> None:
    first_byte_of_emoji = gpt2.encode("🙂")[0]
    stream = gpt2.stream_decoder()
    assert stream.feed(first_byte_of_emoji) == ""
    assert stream.flush() == "\ufffd"
    assert stream.feed(15496) == "Hello"


# --- errors ---


def test_out_of_range_id_names_the_id_and_the_vocab_size(gpt2: Tokenizer) -> None:
    with pytest.raises(ValueError, match="token id 50300 is out of range for vocab_size 50257"):
        gpt2.decode([15496, 50300])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        gpt2.decode([-1])
    with pytest.raises(ValueError, match="token id 50257 is out of range"):
        gpt2.stream_decoder().feed(50257)


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(TokenizerNotFoundError, match="no-such-model"):
        Tokenizer.from_folder(missing)


def test_folder_without_tokenizer_files_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vocab\.json \+ merges\.txt or a \*\.tiktoken"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerNotFoundError, match=r"found only vocab\.json"):
        Tokenizer.from_folder(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerNotFoundError, match=r"vocab\.json does not exist"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerNotFoundError, match=r"merges\.txt does not exist"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(TokenizerNotFoundError, match="gpt2.tiktoken does not exist"):
        Tokenizer.from_tiktoken(tmp_path / "gpt2.tiktoken")


def test_malformed_files_name_the_file_and_line(tiny_bpe_folder: Path, tmp_path: Path) -> None:
    (tiny_bpe_folder / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json is not valid JSON"):
        Tokenizer.from_folder(tiny_bpe_folder)
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nnot-a-line\n")
    with pytest.raises(ValueError, match="bad.tiktoken line 2"):
        Tokenizer.from_tiktoken(bad)


# --- packaging ---


def test_runtime_tokenizer_imports_without_torch() -> None:
    # sys.modules[name] = None makes any import of that name raise ImportError.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['models'] = None\n"
        "import runtime.tokenizer\n"
        "from runtime import Tokenizer\n"
        "print(Tokenizer.gpt2().encode('Hello world'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[15496, 995]"
