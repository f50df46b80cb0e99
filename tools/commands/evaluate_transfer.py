"""Score pose-transfer results (`make eval-transfer`): the `grpose-eval transfer` command
(`grpose.app.evaluate`), kept here as a script for
`python tools/commands/evaluate_transfer.py ...`."""
from grpose.app.evaluate import evaluate_transfer as main, transfer_cli as cli

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli(prog="tools/commands/evaluate_transfer.py")
