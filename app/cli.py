"""`python app.py [--host 127.0.0.1] [--port 7860] [--auth user:pass] [--ssl-certfile F --ssl-keyfile F]
[--runs-dir DIR] [--data-root DIR]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core import paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python app.py",
        description="The VA-π Workbench in the browser: launch alignment runs, watch their curves, compare base and "
                    "aligned samples. Serves on 127.0.0.1 unless told otherwise.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1). Any non-loopback address needs --auth")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                   help="require this login (repeat for several users); needed for a non-loopback --host")
    p.add_argument("--ssl-certfile", default=None, metavar="FILE",
                   help="serve HTTPS with this certificate (PEM; with --ssl-keyfile): use it whenever --host is not "
                        "loopback, or the login crosses the network in clear text")
    p.add_argument("--ssl-keyfile", default=None, metavar="FILE", help="the private key of --ssl-certfile (PEM)")
    p.add_argument("--runs-dir", type=Path, default=paths.RUNS_DIR,
                   help=f"folder holding the runs and runs.db (default {paths.RUNS_DIR}; env VAPI_RUNS)")
    p.add_argument("--data-root", dest="data_roots", type=Path, action="append", default=None, metavar="DIR",
                   help=f"a folder users may pick training data from (repeatable; default {paths.ROOT / 'data'})")
    p.add_argument("--model-cache", type=int, default=2, metavar="N",
                   help="loaded models kept for the Compare tab (default 2: one base, one aligned)")
    return p


def main(argv: list[str] | None = None) -> int:
    from app import safety
    from core.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        auth = safety.parse_auth(args.auth)
        safety.check_bind(args.host, auth)
        safety.check_ssl(args.ssl_certfile, args.ssl_keyfile)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from app.main import launch

    try:
        app, url = launch(args.runs_dir, host=args.host, port=args.port, auth=auth or None, data_roots=args.data_roots,
                          model_cache_size=args.model_cache, prevent_thread_lock=True, quiet=True,
                          ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
        print(f"VA-π Workbench on {url} (runs: {app.ctx.runs_dir}; data roots: "
              f"{', '.join(map(str, app.ctx.data_roots))}){'; login required' if auth else ''}"
              f"{'' if args.ssl_certfile or not auth else ' (no --ssl-certfile: the login is sent unencrypted)'}. Ctrl-C stops the UI; "
              "runs keep going.", flush=True)
        try:
            app.block_thread()
        finally:
            app.close(verbose=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
