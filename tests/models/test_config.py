"""GPT2Config holds every field of transformers' GPT2Config and round-trips config.json both ways."""

from __future__ import annotations

import json

import pytest
import transformers

import models
from models import PRESETS, GPT2Config

from . import oracle  # noqa: F401  (sets the transformers environment)


def test_defaults_equal_transformers_defaults():
    ours = json.loads(json.dumps(GPT2Config().to_dict()))
    theirs = json.loads(transformers.GPT2Config().to_json_string(use_diff=False))
    for key in [
        "vocab_size",
        "n_positions",
        "n_embd",
        "n_layer",
        "n_head",
        "n_inner",
        "activation_function",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "layer_norm_epsilon",
        "initializer_range",
        "summary_type",
        "summary_use_proj",
        "summary_activation",
        "summary_proj_to_labels",
        "summary_first_dropout",
        "scale_attn_weights",
        "use_cache",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "scale_attn_by_inverse_layer_idx",
        "reorder_and_upcast_attn",
        "add_cross_attention",
        "tie_word_embeddings",
        "id2label",
        "label2id",
        "problem_type",
        "pruned_heads",
        "model_type",
    ]:
        assert ours[key] == theirs[key], key


def test_transformers_reads_our_config_json(tmp_path):
    config = GPT2Config(n_layer=3, n_head=4, n_embd=64, num_labels=3, pad_token_id=5, pruned_heads={1: [0]})
    config.save(tmp_path)
    theirs = transformers.GPT2Config.from_pretrained(tmp_path)
    assert (theirs.n_layer, theirs.n_head, theirs.n_embd, theirs.num_labels) == (3, 4, 64, 3)
    assert theirs.pad_token_id == 5 and theirs.pruned_heads == {1: [0]}


def test_we_read_transformers_config_json_and_keep_unknown_fields(tmp_path):
    transformers.GPT2Config(n_layer=2, n_embd=48, n_head=6, num_labels=4, problem_type="regression").save_pretrained(
        tmp_path
    )
    ours = GPT2Config.from_json_file(tmp_path / "config.json")
    assert (ours.n_layer, ours.n_embd, ours.n_head, ours.num_labels, ours.problem_type) == (2, 48, 6, 4, "regression")
    assert ours.extra["transformers_version"]
    again = tmp_path / "again"
    again.mkdir()
    ours.save(again)
    assert json.loads((again / "config.json").read_text())["transformers_version"] == ours.extra["transformers_version"]


def test_transformers_5_style_config_loads(tmp_path):
    data = transformers.GPT2Config(n_layer=2).to_dict()
    data["dtype"] = data.pop("torch_dtype", None) or "float32"
    data["some_future_field"] = {"a": 1}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = GPT2Config.from_json_file(tmp_path / "config.json")
    assert config.n_layer == 2 and config.extra["dtype"] == "float32"


def test_generic_attribute_names_are_aliases():
    config = GPT2Config.from_dict(
        {"hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 2, "max_position_embeddings": 128}
    )
    assert (config.n_embd, config.n_head, config.n_layer, config.n_positions) == (64, 8, 2, 128)
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (64, 8, 8)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_the_published_shapes_and_parameter_counts(name):
    config = GPT2Config.from_preset(name)
    theirs = transformers.GPT2Config(**PRESETS[name].fields)
    assert (config.n_embd, config.n_layer, config.n_head) == (theirs.n_embd, theirs.n_layer, theirs.n_head)
    c, layers, v, p = config.n_embd, config.n_layer, config.vocab_size, config.n_positions
    per_block = 12 * c * c + 13 * c
    assert PRESETS[name].parameters == v * c + p * c + layers * per_block + 2 * c


def test_preset_parameter_count_equals_a_built_model():
    config = GPT2Config.from_preset("distilgpt2")
    assert models.GPT2LMHeadModel(config).num_parameters() == PRESETS["distilgpt2"].parameters


def test_head_count_must_divide_the_embedding():
    with pytest.raises(ValueError, match="n_head=5 does not divide n_embd=768"):
        GPT2Config(n_head=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(attn_implementation="flex"), "attn_implementation 'flex' is unknown"),
        (dict(summary_type="max"), "summary_type 'max' is unknown"),
        (dict(problem_type="ranking"), "problem_type 'ranking' is unknown: use one of regression"),
    ],
)
def test_invalid_fields_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config(**kwargs)


def test_unknown_preset_and_non_gpt2_config_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'gpt3'"):
        GPT2Config.from_preset("gpt3")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama', not 'gpt2'"):
        GPT2Config.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GPT2Config.from_json_file(tmp_path / "config.json")


def test_transformers_style_keyword_arguments_are_accepted():
    config = GPT2Config(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, id2label={0: "neg", 1: "pos"},
                        label2id={"neg": 0, "pos": 1}, torch_dtype="float32", _attn_implementation="eager")
    assert (config.n_embd, config.n_head, config.n_layer, config.num_labels) == (64, 4, 2, 2)
    assert config.attn_implementation == "eager" and config.label2id == {"neg": 0, "pos": 1}
    assert config.extra == {"torch_dtype": "float32"}
