"""``hydra dashboard [--host H] [--port P]``: the local, read-only web dashboard (hydra_engine/dashboard)."""
from __future__ import annotations

import sys

from . import config_option

EXIT_OK, EXIT_USAGE = 0, 2


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="local web dashboard of the running and past sessions (read-only)",
                       parents=[config_option()],
                       description="Serve a read-only dashboard of the session logs in engine.log_dir and the "
                       "store's kill state. Binds to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    p.add_argument("--refresh", type=int, default=10, help="seconds between reloads of a running session's page")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from ..config import load_settings
    from ..dashboard import create_app
    settings = load_settings(args.config)
    if not 1 <= args.port <= 65535 or args.refresh < 1:
        print("error: --port must be 1..65535 and --refresh at least 1", file=sys.stderr)
        return EXIT_USAGE
    log_dir = settings.resolve_path(settings.engine.log_dir)
    app = create_app(log_dir, store_url=settings.storage.url, root=settings.resolve_path("."),
                     refresh_s=args.refresh)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can read your sessions",
              file=sys.stderr)
    print(f"HYDRA dashboard: http://{args.host}:{args.port}/  (logs {log_dir}; read-only; Ctrl-C stops it)",
          flush=True)
    from werkzeug.serving import run_simple
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    return EXIT_OK
