"""The `lus` command: every subcommand has a --help that says what it does, with an example."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lus.cli import SUBCOMMANDS, main


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"  {name} " in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help_has_description_and_example(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code in (0, None)
    text = capsys.readouterr().out.lower()
    assert f"lus {name}" in text
    assert "example" in text or "e.g." in text


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "lus", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lus <command>" in proc.stdout
