"""The installed commands (setup.cfg `console_scripts`): `grpose-generate`, `grpose-eval`,
`grpose-app` and `grpose-demo` (the `grpose` command, the LightningCLI, is `grpose.cli.run`);
each returns None, so its exit status is 0 unless it fails (`SystemExit` with one line)."""
from __future__ import annotations


def generate() -> None:
    """`grpose-generate --bundle B --pose P --prompt "..."` (`make generate`)."""
    from grpose.app.generate import main
    main()


def evaluate() -> None:
    """`grpose-eval [transfer] --config C --images DIR` (`make eval`, `make eval-transfer`)."""
    from grpose.app.evaluate import main
    main()


def app() -> None:
    """`grpose-app [--runs runs] [--port 8765]` (`make app`)."""
    from grpose.app.__main__ import main
    main()


def demo() -> None:
    """`grpose-demo [compare | compare-transfer] [--flags]` (`make demo`, `make compare`)."""
    from grpose.demo import main
    main()
