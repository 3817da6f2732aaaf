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


def test_train_and_tune_summaries_name_every_shipped_family():
    from lus_dist.engine.registry import BUILTIN

    for cmd in ("train", "tune"):
        assert [name for name in BUILTIN if name not in SUBCOMMANDS[cmd][1]] == [], cmd


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


@pytest.mark.parametrize("args,word", [(["--nproc", "0"], "--nproc 0"),
                                       (["trian.epochs=1"], "trian")])
def test_demo_checks_its_arguments_before_preparing_data(tmp_path, capsys, args, word):
    assert main(["demo", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lus demo: ") and word in err[0], err
    assert not (tmp_path / "out").exists()
