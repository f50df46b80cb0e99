"""Score a folder of generated images (`make eval`): the `grpose-eval` command
(`grpose.app.evaluate`), kept here as a script for `python tools/commands/evaluate.py ...`."""
from grpose.app.evaluate import cli, evaluate as main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli(prog="tools/commands/evaluate.py")
