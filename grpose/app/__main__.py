"""`python -m grpose.app [--runs runs] [--port 8765]`: serve the app until Ctrl-C."""
from __future__ import annotations

import argparse

from grpose.app.server import serve


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m grpose.app", description=__doc__.split(":")[0])
    p.add_argument("--runs", default="runs", help="folder searched for bundles (default runs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args(argv)
    server = serve(args.runs, args.host, args.port)
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
