"""The installed commands (setup.cfg `console_scripts`): each answers `--help` (through its entry
point, in-process) and, once `pip install -e .` ran, is a script in the venv's bin folder that
calls that entry point; one of them is run as installed."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys

import pytest

from grpose import cli
from grpose.app import commands

COMMANDS = {"grpose": ("run", "{fit,validate,test,predict}"),
            "grpose-generate": ("generate", "--bundle BUNDLE"),
            "grpose-eval": ("evaluate", "--images IMAGES"),
            "grpose-app": ("app", "--max-resident"),
            "grpose-demo": ("demo", "--quick")}
BIN = os.path.dirname(sys.executable)
MODULES = {**dict.fromkeys(COMMANDS, commands), "grpose": cli}  # the CLI comes after the app


def test_setup_cfg_declares_each_command():
    cfg = configparser.ConfigParser()
    cfg.read("setup.cfg")
    scripts = dict(line.split(" = ") for line in
                   cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == {name: f"{MODULES[name].__name__}:{fn}" for name, (fn, _) in COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_answers_help(name, monkeypatch, capsys):
    fn, expected = COMMANDS[name]
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as done:
        getattr(MODULES[name], fn)()
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out and expected in out
    installed = os.path.join(BIN, name)
    if os.path.isfile(installed):  # pip install -e . wrote it: it calls the entry point
        with open(installed) as f:
            assert f"from {MODULES[name].__name__} import {fn}" in f.read()


def test_eval_transfer_answers_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["grpose-eval", "transfer", "--help"])
    with pytest.raises(SystemExit) as done:
        commands.evaluate()
    assert done.value.code in (0, None) and "--real_data" in capsys.readouterr().out


def test_an_installed_command_runs():
    installed = os.path.join(BIN, "grpose-app")
    if not os.path.isfile(installed):
        pytest.skip(f"{installed}: not installed (pip install -e . creates the commands)")
    done = subprocess.run([installed, "--help"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "usage: grpose-app" in done.stdout, done.stderr
