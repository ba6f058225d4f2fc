"""The `gpt2-export` command line: thin commands over the library, errors as one line, help everywhere."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gpt2_export import cli
from gpt2_export.cli import main

COMMANDS = sorted(main.list_commands(None))  # the group's own commands and the registered ones


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_the_group_lists_its_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("export", "validate", "reference-generate", "serve", "build-engine", "bench", "bench-serve"):
        assert command in result.output


def test_the_benchmarks_commands_come_through_entry_points_not_imports():
    # pyproject.toml registers them; a checkout installed without `pip install -e .` would not list them.
    registered = cli.registered_commands()
    assert {name: ep.value for name, ep in registered.items()} == {
        "bench": "benchmarks.cli:bench_command", "bench-serve": "benchmarks.cli:bench_serve_command",
    }
    from benchmarks.cli import bench_command

    assert main.get_command(None, "bench") is bench_command


def test_a_registered_command_that_cannot_load_fails_with_the_fix(monkeypatch):
    from importlib.metadata import EntryPoint

    broken = EntryPoint("bench-gpu", "no_such_package.cli:command", cli.COMMAND_GROUP)
    monkeypatch.setattr(cli, "registered_commands", lambda: {"bench-gpu": broken})
    group = cli.CommandGroup(commands={"export": main.commands["export"]})
    assert group.list_commands(None) == ["bench-gpu", "export"]
    result = CliRunner().invoke(group, ["bench-gpu", "--quick"])
    assert result.exit_code == 1
    assert "the `bench-gpu` command comes from no_such_package.cli:command, which cannot be loaded" in result.output
    assert "ModuleNotFoundError" in result.output and "pip install -e ." in result.output


def test_export_then_validate(hf_checkpoints, tmp_path):
    out = tmp_path / "lm"
    result = CliRunner().invoke(main, ["export", "--model", str(hf_checkpoints["lm"]), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported lm (fp32, opset 17, fused graph" in result.output and "validated" in result.output
    assert "[build fused graph" in result.output and "[validate] done" in result.output  # progress per stage
    assert "ok   prefill (past 0)" in result.output
    result = CliRunner().invoke(main, ["validate", str(out)])
    assert result.exit_code == 0, result.output
    assert "all outputs within tolerance" in result.output


def test_unknown_head_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["export", "--head", "causal", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "'causal' is not one of" in result.output


def test_library_errors_become_one_line_messages(hf_checkpoints, tmp_path):
    (tmp_path / "x").write_text("occupied")
    result = CliRunner().invoke(main, ["export", "--model", str(hf_checkpoints["lm"]), "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert "Error: output folder" in result.output and "pass --overwrite" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["export", "--opset", "9", "--output", str(tmp_path / "new")])
    assert result.exit_code == 1 and "opset 9 is too old" in result.output
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output


@pytest.fixture(scope="module")
def lm_export(hf_checkpoints, tmp_path_factory):
    """An unvalidated lm export of the tiny checkpoint, for tests that damage a copy of it."""
    from gpt2_export.export import ExportOptions, export

    return export(hf_checkpoints["lm"], tmp_path_factory.mktemp("cli") / "lm", ExportOptions(validate=False)).folder


def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / "copy")


def test_the_fused_graph_exports_at_the_lowest_opset(hf_checkpoints, tmp_path):
    out = tmp_path / "op14"
    result = CliRunner().invoke(main, ["export", "--model", str(hf_checkpoints["lm"]), "--output", str(out),
                                       "--opset", "14"])
    assert result.exit_code == 0, result.output  # was: Shape(end=2), an opset-15 attribute, failed to load
    assert "exported lm (fp32, opset 14, fused graph" in result.output


def test_generate_errors_come_before_any_text(hf_checkpoints, tmp_path):
    from gpt2_export.export import ExportOptions, export

    folder = export(hf_checkpoints["seq-cls"], tmp_path / "sc", ExportOptions(head="seq-cls", validate=False)).folder
    result = CliRunner().invoke(main, ["generate", str(folder), "--prompt", "the cat"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: generate() needs an export of head lm"), result.output


def test_generate_with_too_long_a_request_is_one_error_line(lm_export):
    result = CliRunner().invoke(main, ["generate", str(lm_export), "--prompt", "the cat", "--max-new-tokens", "64"])
    assert result.exit_code == 1 and result.output.startswith("Error: prompt of"), result.output
    assert "exceeds n_positions 64" in result.output and "Traceback" not in result.output


def test_overwrite_never_deletes_the_checkpoint(hf_checkpoints, tmp_path):
    import shutil

    checkpoint = shutil.copytree(hf_checkpoints["lm"], tmp_path / "parent" / "ckpt")
    before = sorted(p.name for p in checkpoint.iterdir())
    for output in (checkpoint, checkpoint.parent):
        result = CliRunner().invoke(main, ["export", "--model", str(checkpoint), "--output", str(output),
                                           "--overwrite", "--no-validate"])
        assert result.exit_code == 1 and "holds the checkpoint" in result.output, result.output
        assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_a_relative_checkpoint_is_recorded_so_validate_finds_it_anywhere(hf_checkpoints, tmp_path, monkeypatch):
    from runtime.manifest import Manifest

    monkeypatch.chdir(hf_checkpoints["lm"].parent)
    out = tmp_path / "rel"
    result = CliRunner().invoke(main, ["export", "--model", hf_checkpoints["lm"].name, "--output", str(out),
                                       "--no-validate"])
    assert result.exit_code == 0, result.output
    assert Manifest.load(out).checkpoint == str(hf_checkpoints["lm"].resolve())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(out)])
    assert result.exit_code == 0, result.output


def test_validate_on_a_damaged_folder_is_one_error_line(lm_export, tmp_path):
    folder = _copy(lm_export, tmp_path)
    (folder / "model.onnx").write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 1 and "Error: ONNX Runtime cannot load" in result.output, result.output
    (folder / "model.onnx").unlink()
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 1 and "model.onnx is missing" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "fp8", "names dtype 'fp8'"),
    ("head", "base", "the graph has no output 'last_hidden_state'"),  # was: validated (only presents compared)
])
def test_validate_catches_a_tampered_export_json(lm_export, tmp_path, field, value, message):
    import json

    folder = _copy(lm_export, tmp_path)
    data = json.loads((folder / "export.json").read_text())
    (folder / "export.json").write_text(json.dumps({**data, field: value}))
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not isinstance(result.exception, (KeyError, ValueError))


def test_validate_against_another_model_names_the_mismatch(lm_export, hf_checkpoints, tmp_path):
    import transformers

    other = tmp_path / "other"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2,
                                                         n_head=4)).save_pretrained(other)
    result = CliRunner().invoke(main, ["validate", str(lm_export), "--model", str(other)])
    assert result.exit_code == 1, result.output
    assert "does not match the export: vocab_size 100 (export: 317)" in result.output


def test_bench_serve_refuses_requests_the_model_cannot_hold_before_starting_servers(lm_export, tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench-serve", str(lm_export), "--prompt-tokens", "60", "--max-tokens", "64",
                                       "--output", str(out)])
    assert result.exit_code == 1, result.output  # was: every request failed with 400, exit 0
    assert "Error: --prompt-tokens 60 + --max-tokens 64 = 124 exceeds the model's n_positions 64" in result.output
    assert not out.exists()
