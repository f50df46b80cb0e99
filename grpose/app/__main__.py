"""`grpose-app` (or `python -m grpose.app`) `[--runs runs] [--port 8765]`: serve the app until
Ctrl-C."""
from __future__ import annotations

import argparse

from grpose.app.server import serve


def parser() -> argparse.ArgumentParser:
    """The app's command line."""
    p = argparse.ArgumentParser(
        prog="grpose-app", description="The pose editor app: every bundle under a runs folder "
        "side by side in the browser (offline, this machine only by default).")
    p.add_argument("--runs", default="runs", help="folder searched for bundles (default runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-resident", type=int, default=4,
                   help="methods kept loaded at once, on one shared base (default 4)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    server = serve(args.runs, args.host, args.port, args.max_resident)
    print(f"grpose app: http://{args.host}:{server.server_address[1]}/ (bundles under "
          f"{args.runs}; Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
