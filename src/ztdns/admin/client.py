"""``ztdns api METHOD PATH`` (a client of the admin API) and ``ztdns api token`` (make a token and its hash)."""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ztdns.admin.auth import hash_token, new_token

METHODS = ("GET", "PUT", "PATCH", "POST", "DELETE")


def _context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=args.ca) if args.ca else ssl.create_default_context()
    if args.ca:
        # A development CA's server certificate names the address it serves: check it against the URL's host.
        context.check_hostname = True
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    return context


def _call(args: argparse.Namespace) -> int:
    if args.method == "token":
        made = new_token()
        print(f'token: {made}\nconfig: hash = "{hash_token(made, args.scrypt)}"')
        return 0
    if args.method not in METHODS or not args.path:
        print(
            f"ztdns api: METHOD is one of {', '.join(METHODS)} (or token), then a PATH such as /v1/stats",
            file=sys.stderr,
        )
        return 2
    url = urlsplit(args.url)
    body = b""
    if args.data is not None:
        body = sys.stdin.buffer.read() if args.data == "-" else Path(args.data).read_bytes()
    headers = {"accept": "application/json"}
    if body:
        # Imported here: every `ztdns` command registers this one, and the API module loads the whole server.
        from ztdns.admin.api import match_route

        route, _, _ = match_route(args.method, args.path)
        headers["content-type"] = args.content_type or (route.request_type if route else "application/json")
    token: str | None = args.token or os.environ.get("ZTDNS_ADMIN_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    if args.if_match:
        headers["if-match"] = args.if_match
    try:
        connection = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port or 9443, context=_context(args), timeout=args.timeout
        )
        connection.request(args.method, args.path, body=body or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        print(f"ztdns api: {args.url}: {exc}", file=sys.stderr)
        return 1
    etag = response.getheader("etag")
    if etag and args.verbose:
        print(f"ETag: {etag}", file=sys.stderr)
    sys.stdout.write(data.decode("utf-8", "replace"))
    if response.status >= 400:
        print(f"ztdns api: HTTP {response.status} {response.reason}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("api", help="call the admin API (ztdns api GET /v1/stats), or make a token")
    parser.add_argument("method", help=f"{', '.join(METHODS)}, or 'token' to make a token and its config hash")
    parser.add_argument("path", nargs="?", help="e.g. /v1/config, /v1/explain")
    parser.add_argument("--url", default="https://127.0.0.1:9443", help="the admin listener")
    parser.add_argument("--data", help="request body from a file, or - for stdin")
    parser.add_argument(
        "--content-type", help="default: the endpoint's (TOML for PUT /v1/config, merge patch for PATCH, else JSON)"
    )
    parser.add_argument("--if-match", help="the ETag the change is based on (PUT/PATCH /v1/config)")
    parser.add_argument("--token", help="bearer token (default: $ZTDNS_ADMIN_TOKEN)")
    parser.add_argument("--cert", help="admin client certificate (mTLS)")
    parser.add_argument("--key", help="its private key")
    parser.add_argument("--ca", help="CA bundle that verifies the admin listener's certificate")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--scrypt", action="store_true", help="with 'token': store it as scrypt, not sha256")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the ETag to stderr")
    parser.set_defaults(func=_call)
