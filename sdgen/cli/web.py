"""`sdgen web`: the dashboard and JSON API over the data directory (sdgen/web/).

Also what ADSP runs as a deployment (anaconda-project.yml, command `web`): the
`--anaconda-project-*` options are accepted as aliases (address, port, URL prefix) or taken
in and noted (hosts, iframe hosts, X-headers, no-browser).
"""

from __future__ import annotations

import argparse
import sys

from sdgen import defaults, settings
from sdgen.config import data_root
from sdgen.exceptions import UserError


def cmd_web(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from sdgen.web.app import Config, create_app, normalize_prefix
    except ImportError as e:  # a core install without the web extra
        raise UserError(f"sdgen web needs {e.name}: pip install 'sdgen[web]'") from None
    root = data_root(args.data)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    token = args.token or settings.get("SDGEN_WEB_TOKEN")
    config = Config(
        root=root,
        host=args.host,
        read_only=args.read_only,
        token=token,
        prefix=normalize_prefix(args.url_prefix),
        mlflow_url=args.mlflow_url,
        allowed_hosts=list(args.allowed_hosts or []),
    )
    app = create_app(config, frame_ancestors=list(args.iframe_hosts or []) or None)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    if config.read_only:
        mode = "read-only"
    elif token:
        mode = "writes need the token"
    elif config.loopback:
        mode = "writes allowed from this machine"
    else:
        mode = "read-only: it listens beyond this machine and no token is set (--token or SDGEN_WEB_TOKEN)"
    print(
        f"sdgen web: {root} at http://{shown_host}:{args.port}{config.prefix}/ ({mode}); Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        proxy_headers=args.use_xheaders,
        forwarded_allow_ips="*" if args.use_xheaders else None,
        server_header=False,
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "web",
        help="serve a dashboard and JSON API of the queue (works with or without a daemon)",
        description="Serve the queue, each request's images and the write actions (submit, cancel, "
        "retry, pause, resume, priority) in a browser, and the same as a JSON API under /api/. "
        "Reads the data directory alone. Off loopback, writes need --token (or SDGEN_WEB_TOKEN).",
    )
    p.add_argument(
        "--host", "--anaconda-project-address", dest="host", default=defaults.WEB_HOST, help="address to listen on"
    )
    p.add_argument("--port", "--anaconda-project-port", dest="port", type=int, default=defaults.WEB_PORT)
    p.add_argument("--read-only", action="store_true", help="show, never change: every write action is refused")
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="writes need this token (default: $SDGEN_WEB_TOKEN); without one, only a loopback server takes writes",
    )
    p.add_argument(
        "--url-prefix",
        "--anaconda-project-url-prefix",
        dest="url_prefix",
        metavar="PATH",
        default="",
        help="serve under this URL path (e.g. /projects/sdgen), as behind a proxy",
    )
    p.add_argument(
        "--mlflow-url",
        metavar="URL",
        help="the MLflow UI, for links to requests' parent runs (default: $MLFLOW_TRACKING_URI when it is http(s))",
    )
    # ADSP deployments pass these too (anaconda-project's HTTP options)
    p.add_argument(
        "--anaconda-project-host",
        dest="allowed_hosts",
        action="append",
        metavar="HOST",
        help="a host name the pages are reached by (writes from pages of that host are taken)",
    )
    p.add_argument("--anaconda-project-iframe-hosts", dest="iframe_hosts", action="append", metavar="HOST")
    p.add_argument(
        "--anaconda-project-use-xheaders",
        dest="use_xheaders",
        action="store_true",
        help="trust X-Forwarded-* headers (behind a proxy)",
    )
    p.add_argument("--anaconda-project-no-browser", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_web)
