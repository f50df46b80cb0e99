"""Images for your own pose and prompt from a trained model's bundle: the `grpose-generate`
command (`grpose.app.generate`), kept here as a script for
`python tools/commands/generate.py ...`."""
from grpose.app.generate import check_source, generate, main, parser

__all__ = ["check_source", "generate", "main", "parser"]

if __name__ == "__main__":
    main()
