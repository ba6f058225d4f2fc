"""from_pretrained / save_pretrained: folders transformers wrote load with its numbers, our folders load in
transformers, hub ids resolve from the local cache only, OpenAI TF checkpoints load as transformers loads
them, and every bad input fails with one typed error that names the value, the limit and the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

os.environ["USE_TF"] = "0"  # transformers must not import TensorFlow; the TF tests import it themselves
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import models  # noqa: E402
from models.hub import CheckpointNotFoundError  # noqa: E402
from models.loading import (  # noqa: E402
    CheckpointMismatchError,
    CheckpointReadError,
    UnsupportedModelError,
)

transformers.logging.set_verbosity_error()

from .oracle import HEADS  # noqa: E402

# The weights each head adds on top of GPT2Model (the tied lm_head.weight is never stored).
NEW_HEAD_WEIGHTS = {
    "GPT2DoubleHeadsModel": ["multiple_choice_head.summary.weight", "multiple_choice_head.summary.bias"],
    "GPT2ForSequenceClassification": ["score.weight"],
    "GPT2ForTokenClassification": ["classifier.weight", "classifier.bias"],
    "GPT2ForQuestionAnswering": ["qa_outputs.weight", "qa_outputs.bias"],
}
OUTPUT_FIELDS = ("last_hidden_state", "logits", "mc_logits", "start_logits", "end_logits")
FORMATS = {
    "safetensors": {},
    "bin": {"safe_serialization": False},
    "sharded-safetensors": {"max_shard_size": "20KB"},
    "sharded-bin": {"safe_serialization": False, "max_shard_size": "20KB"},
}


def tiny_fields(**overrides) -> dict:
    """A GPT-2 small enough to build in milliseconds; pad_token_id lets sequence classification batch."""
    shape = {"vocab_size": 99, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}
    return {**shape, "pad_token_id": 0, **overrides}


def oracle(head: str = "GPT2LMHeadModel", seed: int = 0, **overrides):
    """transformers' model with random weights, in eval mode."""
    torch.manual_seed(seed)
    return getattr(transformers, head)(transformers.GPT2Config(**tiny_fields(**overrides))).eval()


def inputs_for(head: str) -> dict:
    """A batch of 2 (of 2 choices each for the double-heads model), ids kept clear of the pad id 0."""
    g = torch.Generator().manual_seed(1)
    if head == "GPT2DoubleHeadsModel":
        ids = torch.randint(1, 99, (2, 2, 7), generator=g)
        return {"input_ids": ids, "mc_token_ids": torch.tensor([[6, 3], [2, 6]])}
    return {"input_ids": torch.randint(1, 99, (2, 7), generator=g)}


def outputs(model, head: str) -> dict[str, torch.Tensor]:
    """The named tensor outputs of a forward pass (ours or transformers')."""
    with torch.no_grad():
        out = model(**inputs_for(head))
    return {name: getattr(out, name) for name in OUTPUT_FIELDS if getattr(out, name, None) is not None}


def assert_same_outputs(ours, theirs, head: str) -> None:
    """Every output tensor within 1e-5 of the oracle's (they are bit-equal in practice)."""
    expected = outputs(theirs, head)
    actual = outputs(ours, head)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=0, msg=name)


def load(head: str, path, **kwargs):
    """Our from_pretrained, returning (model, warning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = getattr(models, head).from_pretrained(path, **kwargs)
    return model, [str(w.message) for w in caught]


def save_transformers(model, folder: Path, **kwargs) -> Path:
    """transformers' save_pretrained into folder."""
    model.save_pretrained(folder, **kwargs)
    return folder


def write_config(folder: Path, data: dict) -> None:
    (folder / "config.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


# ---- folders transformers wrote --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("head", HEADS)
def test_a_folder_transformers_wrote_loads_with_transformers_outputs(tmp_path, head, fmt):
    theirs = oracle(head)
    folder = save_transformers(theirs, tmp_path / "hf", **FORMATS[fmt])
    ours, caught = load(head, folder)
    assert not caught
    assert not ours.training
    assert_same_outputs(ours, theirs, head)


@pytest.mark.parametrize("head", HEADS)
def test_our_folder_round_trips_and_transformers_reads_it_with_equal_outputs(tmp_path, head):
    ours = getattr(models, head).from_pretrained(save_transformers(oracle(head), tmp_path / "hf"))
    folder = ours.save_pretrained(tmp_path / "ours")
    again, caught = load(head, folder)
    assert not caught
    assert_same_outputs(again, ours, head)
    theirs = getattr(transformers, head).from_pretrained(folder).eval()
    assert_same_outputs(ours, theirs, head)


@pytest.mark.slow
def test_a_gpt2_small_shaped_folder_round_trips_through_both_libraries(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # the published gpt2 shape
    ours, caught = load("GPT2LMHeadModel", save_transformers(theirs, tmp_path / "hf"))
    assert not caught and ours.num_parameters() == models.PRESETS["gpt2"].parameters
    ids = torch.tensor([[15496, 995, 11, 314, 716, 257, 3303, 2746, 13]])
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(ours(ids).logits, expected, atol=1e-5, rtol=0)
        back = transformers.GPT2LMHeadModel.from_pretrained(ours.save_pretrained(tmp_path / "ours")).eval()
        torch.testing.assert_close(back(ids).logits, expected, atol=1e-5, rtol=0)


def test_our_safetensors_file_holds_what_transformers_writes(tmp_path):
    theirs = oracle()
    save_transformers(theirs, tmp_path / "hf")
    models.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    with (
        safe_open(tmp_path / "ours" / "model.safetensors", "pt") as ours,
        safe_open(tmp_path / "hf" / "model.safetensors", "pt") as expected,
    ):
        assert ours.metadata() == expected.metadata() == {"format": "pt"}
        assert sorted(ours.keys()) == sorted(expected.keys())
        assert "lm_head.weight" not in list(ours.keys())  # tied to wte, as transformers drops it
        for key in list(expected.keys()):
            assert torch.equal(ours.get_tensor(key), expected.get_tensor(key)), key
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["dtype"] == "float32"


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_saving_writes_the_shards_and_index_transformers_writes(tmp_path, safe):
    theirs = oracle()
    save_transformers(theirs, tmp_path / "hf", max_shard_size="20KB", safe_serialization=safe)
    ours = models.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours", max_shard_size="20KB", safe_serialization=safe)
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    expected = json.loads((tmp_path / "hf" / index).read_text())
    written = json.loads((tmp_path / "ours" / index).read_text())
    assert written == expected  # same shard names, same weight_map, metadata.total_size and total_parameters
    names = [p.name for p in (tmp_path / "ours").iterdir()]
    shards = sorted(n for n in names if re.fullmatch(r".*-\d{5}-of-\d{5}\..*", n))
    assert shards == sorted(set(expected["weight_map"].values()))
    theirs_back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    assert_same_outputs(theirs_back, ours, "GPT2LMHeadModel")


def test_saving_again_removes_weights_of_the_previous_save(tmp_path):
    model = models.GPT2LMHeadModel.from_pretrained(save_transformers(oracle(), tmp_path / "hf"))
    model.save_pretrained(tmp_path / "out", max_shard_size="20KB")
    model.save_pretrained(tmp_path / "out", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "pytorch_model.bin"]


# ---- heads and checkpoints of other heads ----------------------------------------------------------------


@pytest.mark.parametrize("head", sorted(NEW_HEAD_WEIGHTS))
def test_a_base_checkpoint_loads_into_a_head_and_warns_naming_the_new_weights(tmp_path, head):
    base = oracle("GPT2Model")
    ours, caught = load(head, save_transformers(base, tmp_path / "base"))
    assert len(caught) == 1 and "newly initialized" in caught[0] and "TRAIN" in caught[0]
    for name in NEW_HEAD_WEIGHTS[head]:
        assert name in caught[0]
    with torch.no_grad():
        ids = inputs_for("GPT2Model")["input_ids"]
        torch.testing.assert_close(
            ours.transformer(ids).last_hidden_state, base(ids).last_hidden_state, atol=1e-5, rtol=0
        )


def test_a_base_checkpoint_loads_into_the_lm_head_silently_with_its_head_tied(tmp_path):
    folder = save_transformers(oracle("GPT2Model"), tmp_path / "base")
    ours, caught = load("GPT2LMHeadModel", folder)
    assert not caught
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert_same_outputs(ours, transformers.GPT2LMHeadModel.from_pretrained(folder).eval(), "GPT2LMHeadModel")


def test_a_head_checkpoint_loads_into_gpt2model_and_warns_that_the_head_weights_are_unused(tmp_path):
    theirs = oracle("GPT2DoubleHeadsModel")
    ours, caught = load("GPT2Model", save_transformers(theirs, tmp_path / "double"))
    assert len(caught) == 1 and "not used" in caught[0] and "multiple_choice_head.summary.weight" in caught[0]
    assert_same_outputs(ours, theirs.transformer, "GPT2Model")


def test_another_heads_weights_are_ignored_and_our_head_newly_initialised(tmp_path):
    folder = save_transformers(oracle("GPT2ForSequenceClassification"), tmp_path / "seq")
    _, caught = load("GPT2ForTokenClassification", folder)
    assert any("not used" in m and "score.weight" in m for m in caught)
    assert any("newly initialized" in m and "classifier.weight" in m for m in caught)


def test_a_folder_with_pruned_heads_loads_and_saves_with_equal_outputs(tmp_path):
    theirs = oracle()
    theirs.prune_heads({0: [1, 2], 1: [0]})
    ours, caught = load("GPT2LMHeadModel", save_transformers(theirs, tmp_path / "pruned"))
    assert not caught and ours.config.pruned_heads == {0: [1, 2], 1: [0]}
    assert ours.transformer.h[0].attn.c_attn.weight.shape == (32, 48)
    assert_same_outputs(ours, theirs, "GPT2LMHeadModel")
    back = transformers.GPT2LMHeadModel.from_pretrained(ours.save_pretrained(tmp_path / "ours")).eval()
    assert_same_outputs(ours, back, "GPT2LMHeadModel")


def test_an_untied_lm_head_round_trips(tmp_path):
    theirs = oracle(tie_word_embeddings=False)
    ours, _ = load("GPT2LMHeadModel", save_transformers(theirs, tmp_path / "untied"))
    assert ours.lm_head.weight is not ours.transformer.wte.weight
    assert_same_outputs(ours, theirs, "GPT2LMHeadModel")
    folder = ours.save_pretrained(tmp_path / "ours")
    assert "lm_head.weight" in load_file(folder / "model.safetensors")
    assert_same_outputs(ours, transformers.GPT2LMHeadModel.from_pretrained(folder).eval(), "GPT2LMHeadModel")


def test_legacy_mask_buffers_and_gamma_beta_layer_norm_names_load(tmp_path):
    theirs = oracle("GPT2Model")
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    for key in [k for k in state if re.fullmatch(r".*ln_\w+\.(weight|bias)", k)]:
        state[key.replace(".weight", ".gamma").replace(".bias", ".beta")] = state.pop(key)
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = tmp_path / "legacy"
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    theirs.config.to_json_file(folder / "config.json")
    ours, caught = load("GPT2Model", folder)
    assert not caught
    assert_same_outputs(ours, theirs, "GPT2Model")


# ---- config and dtype ------------------------------------------------------------------------------------


def test_a_config_json_written_by_transformers_5_loads(tmp_path):
    theirs = oracle()
    folder = save_transformers(theirs, tmp_path / "v5")
    data = json.loads((folder / "config.json").read_text())
    data.pop("torch_dtype", None)
    data.update(dtype="float32", transformers_version="5.24.0", layer_types=["full_attention"] * 2)
    data.update(future_option={"nested": True}, output_attentions=False)
    write_config(folder, data)
    ours, _ = load("GPT2LMHeadModel", folder)
    assert ours.config.extra["future_option"] == {"nested": True}
    assert_same_outputs(ours, theirs, "GPT2LMHeadModel")


def test_dtype_none_loads_float32_a_dtype_casts_and_auto_follows_the_config(tmp_path):
    theirs = oracle().half()
    folder = save_transformers(theirs, tmp_path / "half")
    assert load("GPT2LMHeadModel", folder)[0].dtype == torch.float32
    assert load("GPT2LMHeadModel", folder, dtype=torch.float16)[0].dtype == torch.float16
    assert load("GPT2LMHeadModel", folder, dtype="bfloat16")[0].dtype == torch.bfloat16
    auto, _ = load("GPT2LMHeadModel", folder, dtype="auto")
    assert auto.dtype == torch.float16
    assert torch.equal(auto.transformer.wte.weight, theirs.transformer.wte.weight)
    data = json.loads((folder / "config.json").read_text())
    data["torch_dtype"] = data.pop("dtype")  # the name transformers < 4.56 wrote
    write_config(folder, data)
    assert load("GPT2LMHeadModel", folder, dtype="auto")[0].dtype == torch.float16
    del data["torch_dtype"]
    write_config(folder, data)
    assert load("GPT2LMHeadModel", folder, dtype="auto")[0].dtype == torch.float16  # from the weights


def test_attn_implementation_config_objects_and_overrides_reach_the_model(tmp_path):
    base = models.GPT2Model.from_pretrained(save_transformers(oracle("GPT2Model"), tmp_path / "hf"))
    folder = base.save_pretrained(tmp_path / "ours")  # our config.json lists id2label (2 labels)
    eager, _ = load("GPT2LMHeadModel", folder, attn_implementation="eager")
    assert eager.config.attn_implementation == "eager"
    config = models.GPT2Config(**tiny_fields(n_inner=128), attn_implementation="eager")
    given, _ = load("GPT2Model", folder, config=config)
    assert given.config.attn_implementation == "eager" and given.config.n_inner == 128
    assert given.config is not config
    from_transformers, _ = load("GPT2Model", folder, config=transformers.GPT2Config(**tiny_fields()))
    assert from_transformers.config.n_embd == 32 and "do_sample" not in from_transformers.config.extra
    three, caught = load("GPT2ForSequenceClassification", folder, num_labels=3)
    assert three.score.weight.shape == (3, 32) and three.config.num_labels == 3
    assert any("score.weight" in m for m in caught)


def test_an_unknown_override_is_a_type_error_that_suggests_the_field(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf")
    with pytest.raises(TypeError, match=r"n_layers=3.*not a GPT2Config field.*did you mean n_layer"):
        models.GPT2LMHeadModel.from_pretrained(folder, n_layers=3)


# ---- bad input -------------------------------------------------------------------------------------------


def test_a_missing_folder_is_a_checkpoint_not_found_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"no folder at .*nowhere.*pass the folder"):
        models.GPT2Model.from_pretrained(tmp_path / "nowhere")


def test_a_folder_without_weights_says_what_it_holds_and_what_was_expected(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    write_config(folder, tiny_fields())
    expected = r"no weights in .*holds: config.json\): expected model.safetensors"
    with pytest.raises(CheckpointNotFoundError, match=expected):
        models.GPT2Model.from_pretrained(folder)


def test_a_folder_without_config_json_asks_for_it(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"no config.json in .*copy the checkpoint's config"):
        models.GPT2LMHeadModel.from_pretrained(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_weights_file_is_a_read_error_naming_the_file(tmp_path, name, damage):
    folder = save_transformers(oracle(), tmp_path / "hf", safe_serialization=name.endswith(".safetensors"))
    data = (folder / name).read_bytes()
    damaged = {"garbage": b"not a checkpoint" * 64, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    (folder / name).write_bytes(damaged)
    with pytest.raises(CheckpointReadError, match=rf"cannot read .*{re.escape(name)}.*(damaged|download)"):
        models.GPT2LMHeadModel.from_pretrained(folder)


def test_a_bin_holding_more_than_a_state_dict_is_a_read_error(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf", safe_serialization=False)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({"model": state, "step": torch.tensor(3)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointReadError, match=r"non-tensor entries \['model'\].*model.state_dict\(\)"):
        models.GPT2LMHeadModel.from_pretrained(folder)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_invalid_json_is_a_read_error_naming_the_file(tmp_path, name):
    folder = save_transformers(oracle(), tmp_path / "hf", max_shard_size="20KB")
    (folder / name).write_text('{"n_embd": 32,', encoding="utf-8")
    with pytest.raises(CheckpointReadError, match=rf"{re.escape(name)} is not valid JSON"):
        models.GPT2LMHeadModel.from_pretrained(folder)


def test_an_index_naming_a_missing_shard_lists_it(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf", max_shard_size="20KB")
    (folder / "model-00002-of-00007.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"lists shards .*model-00002-of-00007.safetensors"):
        models.GPT2LMHeadModel.from_pretrained(folder)


def test_a_config_of_another_model_type_is_rejected(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf")
    data = json.loads((folder / "config.json").read_text())
    write_config(folder, {**data, "model_type": "llama"})
    with pytest.raises(UnsupportedModelError, match=r"model_type 'llama', not 'gpt2'.*GPT-2 checkpoint"):
        models.GPT2LMHeadModel.from_pretrained(folder)


def test_impossible_config_values_are_a_read_error_naming_the_source(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf")
    with pytest.raises(CheckpointReadError, match=r"config.json with overrides \{'n_head': 5\}.*n_head=5"):
        models.GPT2LMHeadModel.from_pretrained(folder, n_head=5)


def test_missing_unexpected_and_misshaped_backbone_weights_are_reported_in_one_error(tmp_path):
    theirs = oracle("GPT2Model")
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    del state["h.1.mlp.c_fc.bias"], state["ln_f.weight"]
    state["h.0.attn.extra_proj.weight"] = torch.zeros(3)
    state["wpe.weight"] = torch.zeros(40, 32)
    folder = tmp_path / "broken"
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    theirs.config.to_json_file(folder / "config.json")
    with pytest.raises(CheckpointMismatchError) as info:
        models.GPT2LMHeadModel.from_pretrained(folder)
    error = info.value
    assert error.missing == ["transformer.h.1.mlp.c_fc.bias", "transformer.ln_f.weight"]
    assert error.unexpected == ["h.0.attn.extra_proj.weight"]
    assert error.mismatched == [("transformer.wpe.weight", (40, 32), (32, 32))]
    message = str(error)
    assert "missing from the checkpoint (2)" in message and "unexpected in the checkpoint (1)" in message
    assert "transformer.wpe.weight (checkpoint: wpe.weight): checkpoint (40, 32) vs model (32, 32)" in message
    assert "n_positions=40 (config: 32)" in message and "fix: make config.json" in message


def test_a_config_with_more_layers_than_the_checkpoint_lists_every_missing_weight(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf")
    with pytest.raises(CheckpointMismatchError, match=r"n_layer=2 \(config: 3\)") as info:
        models.GPT2LMHeadModel.from_pretrained(folder, n_layer=3)
    assert len(info.value.missing) == 12 and all(k.startswith("transformer.h.2.") for k in info.value.missing)


def test_a_pruned_checkpoint_without_pruned_heads_in_its_config_says_so(tmp_path):
    theirs = oracle()
    theirs.prune_heads({0: [1]})
    folder = save_transformers(theirs, tmp_path / "pruned")
    data = json.loads((folder / "config.json").read_text())
    write_config(folder, {**data, "pruned_heads": {}})
    expected = r"(?s)c_attn.weight: checkpoint \(32, 72\) vs model \(32, 96\).*pruned_heads"
    with pytest.raises(CheckpointMismatchError, match=expected):
        models.GPT2LMHeadModel.from_pretrained(folder)


def test_bad_dtype_shard_size_and_target_arguments_name_the_value_and_the_fix(tmp_path):
    folder = save_transformers(oracle(), tmp_path / "hf")
    with pytest.raises(ValueError, match=r"dtype 'float8' is not a floating-point torch dtype.*'auto'"):
        models.GPT2LMHeadModel.from_pretrained(folder, dtype="float8")
    model = models.GPT2LMHeadModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"max_shard_size '10 parsecs' is not a size.*'500MB'"):
        model.save_pretrained(tmp_path / "out", max_shard_size="10 parsecs")
    with pytest.raises(ValueError, match=r"max_shard_size must be a positive size, got 0"):
        model.save_pretrained(tmp_path / "out", max_shard_size=0)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match=r"a-file is a file: save_pretrained writes a folder"):
        model.save_pretrained(tmp_path / "a-file")
    with pytest.raises(TypeError, match=r"needs a concrete class"):
        models.GPT2PreTrainedModel.from_pretrained(folder)


# ---- hub ids ---------------------------------------------------------------------------------------------


def fabricate_cache_entry(cache: Path, repo_id: str, source: Path) -> Path:
    """huggingface_hub's cache layout: models--org--name/refs/main -> commit, snapshots/<commit>/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME with downloads off; returns its hub cache folder."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so a repo id is never also a relative folder
    return tmp_path / "hf-home" / "hub"


@pytest.mark.parametrize("repo_id", ["tiny-org/tiny-gpt2", "tiny-gpt2"])
def test_a_hub_id_resolves_from_the_local_cache(tmp_path, offline_hub, repo_id):
    theirs = oracle()
    fabricate_cache_entry(offline_hub, repo_id, save_transformers(theirs, tmp_path / "hf"))
    ours, _ = load("GPT2LMHeadModel", repo_id)
    assert_same_outputs(ours, theirs, "GPT2LMHeadModel")


def test_a_hub_id_not_in_the_cache_offline_is_a_clear_error_without_network(offline_hub, monkeypatch):
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def local_only(*args, **kwargs):
        assert kwargs.get("local_files_only") is True, "tried to download"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", local_only)
    cache = re.escape(str(offline_hub))
    pattern = (
        rf"'openai-community/gpt2' is neither a local folder nor in the local Hugging Face cache at {cache}"
    )
    with pytest.raises(CheckpointNotFoundError, match=pattern) as info:
        models.GPT2LMHeadModel.from_pretrained("openai-community/gpt2")
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert "huggingface-cli download openai-community/gpt2" in str(info.value)


def test_a_failed_download_is_a_clear_error_naming_the_cause(offline_hub, monkeypatch):
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def no_network(*args, **kwargs):
        if kwargs.get("local_files_only"):
            return real(*args, **kwargs)
        raise OSError("simulated: no route to huggingface.co")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(CheckpointNotFoundError, match=r"downloading it failed \(OSError: simulated"):
        models.GPT2LMHeadModel.from_pretrained("someone/tiny-gpt2")


# ---- OpenAI TensorFlow checkpoints -----------------------------------------------------------------------


def tf_variables(vocab: int = 99, positions: int = 32, embd: int = 32, layers: int = 2) -> dict[str, tuple]:
    """The variables of openai/gpt-2's model.py and their shapes (Conv1D kernels as (1, nx, nf))."""
    shapes: dict[str, tuple] = {"model/wte": (vocab, embd), "model/wpe": (positions, embd)}
    shapes.update({"model/ln_f/g": (embd,), "model/ln_f/b": (embd,)})
    convs = {"attn/c_attn": (embd, 3 * embd), "attn/c_proj": (embd, embd)}
    convs.update({"mlp/c_fc": (embd, 4 * embd), "mlp/c_proj": (4 * embd, embd)})
    for i in range(layers):
        for norm in ("ln_1", "ln_2"):
            shapes.update({f"model/h{i}/{norm}/g": (embd,), f"model/h{i}/{norm}/b": (embd,)})
        for name, (nx, nf) in convs.items():
            shapes.update({f"model/h{i}/{name}/w": (1, nx, nf), f"model/h{i}/{name}/b": (nf,)})
    return shapes


def write_tf_checkpoint(folder: Path, hparams: dict, shapes: dict[str, tuple]) -> dict:
    """hparams.json, a `checkpoint` file and model.ckpt.{index,data-*} holding random arrays; returns them."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    arrays = {name: rng.normal(0.0, 0.1, shape).astype(np.float32) for name, shape in shapes.items()}
    names = sorted(arrays)
    folder.mkdir()
    tf.raw_ops.SaveV2(
        prefix=str(folder / "model.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays[n]) for n in names],
    )
    (folder / "hparams.json").write_text(json.dumps(hparams))
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    return arrays


HPARAMS = {"n_vocab": 99, "n_ctx": 32, "n_embd": 32, "n_head": 4, "n_layer": 2}


def test_an_openai_tensorflow_checkpoint_loads_as_transformers_loads_it(tmp_path):
    pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
    from transformers.models.gpt2.modeling_gpt2 import load_tf_weights_in_gpt2

    arrays = write_tf_checkpoint(tmp_path / "tf", HPARAMS, tf_variables())
    ours, caught = load("GPT2LMHeadModel", tmp_path / "tf")
    assert not caught
    state = ours.transformer.state_dict()
    assert torch.equal(state["wte.weight"], torch.from_numpy(arrays["model/wte"]))
    assert torch.equal(state["h.1.ln_2.weight"], torch.from_numpy(arrays["model/h1/ln_2/g"]))
    assert torch.equal(state["h.0.attn.c_attn.weight"], torch.from_numpy(arrays["model/h0/attn/c_attn/w"][0]))
    assert torch.equal(state["h.1.mlp.c_proj.bias"], torch.from_numpy(arrays["model/h1/mlp/c_proj/b"]))
    assert len(state) == len(arrays)
    theirs = oracle(seed=1)
    load_tf_weights_in_gpt2(theirs.transformer, theirs.config, str(tmp_path / "tf" / "model.ckpt"))
    assert_same_outputs(ours, theirs, "GPT2LMHeadModel")


def test_a_tensorflow_checkpoint_that_does_not_fit_its_hparams_reports_every_mismatch(tmp_path):
    pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
    shapes = tf_variables(vocab=100)
    del shapes["model/h1/mlp/c_fc/b"]
    write_tf_checkpoint(tmp_path / "tf", {**HPARAMS, "n_layer": 3}, shapes)
    with pytest.raises(CheckpointMismatchError) as info:
        models.GPT2Model.from_pretrained(tmp_path / "tf")
    assert info.value.mismatched == [("wte.weight", (100, 32), (99, 32))]
    assert "wte.weight (checkpoint: model/wte): checkpoint (100, 32) vs model (99, 32)" in str(info.value)
    assert "h.1.mlp.c_fc.bias" in info.value.missing and "h.2.ln_1.weight" in info.value.missing
    assert "vocab_size=100 (config: 99), n_layer=2 (config: 3)" in str(info.value)


def test_reading_a_tensorflow_checkpoint_without_tensorflow_says_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "tf"
    folder.mkdir()
    (folder / "hparams.json").write_text(json.dumps(HPARAMS))
    (folder / "model.ckpt.index").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` raise ImportError
    with pytest.raises(ImportError, match=r'needs TensorFlow.*pip install "gpt2-export\[tensorflow\]"'):
        models.GPT2LMHeadModel.from_pretrained(folder)


def test_a_bad_hparams_json_names_the_missing_keys(tmp_path):
    folder = tmp_path / "tf"
    folder.mkdir()
    (folder / "hparams.json").write_text(json.dumps({"n_vocab": 99, "n_ctx": 32}))
    (folder / "model.ckpt.index").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match=r"hparams.json lacks n_embd, n_head, n_layer"):
        models.GPT2LMHeadModel.from_pretrained(folder)


@pytest.mark.parametrize("text, message", [("{n_vocab: 99", "is not valid JSON"), ("[99, 32]", "holds a JSON list")])
def test_an_unreadable_hparams_json_names_the_file(tmp_path, text, message):
    folder = tmp_path / "tf"
    folder.mkdir()
    (folder / "hparams.json").write_text(text)
    (folder / "model.ckpt.index").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match=rf"hparams.json {message}"):
        models.GPT2LMHeadModel.from_pretrained(folder)
