"""The `gpt2-export` command line: thin commands over the library, errors as one line, help everywhere."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gpt2_export.cli import main

COMMANDS = sorted(main.commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_the_group_lists_its_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("export", "validate", "reference-generate"):
        assert command in result.output


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
