"""The `micromono` command: a thin argparse shim over `config`, `daemon` and `log` (STYLE rule 12).

`check` runs the daemon's own `Daemon.load()` (placement, compile, instantiate) and binds nothing, so check and
`serve` cannot disagree about a manifest.

Only this module configures logging, picks the event loop and turns a `MicromonoError` into a one-line (or
one-block) message on stderr with an exit code. Unexpected exceptions keep their traceback.

Exit codes:
    0  success (serve: stopped by SIGINT/SIGTERM after a graceful shutdown; check: everything is valid)
    1  check found problems (the manifest, a module, or a start-up setting such as daemon.cpu or an OS limit);
       status could not reach the daemon
    2  usage error (bad command-line arguments)
    3  serve could not start (invalid manifest, a module that does not load, a port that cannot be bound)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from typing import Final

from . import __version__
from .config import Address, Config, load_config
from .errors import MicromonoError

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2
EXIT_STARTUP_FAILURE: Final = 3


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _metrics_address(text: str) -> Address | None:
    return None if text == "" else _address(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="micromono", description="Run many WebAssembly services in one process.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the services of a manifest until SIGINT/SIGTERM")
    serve.add_argument("manifest", help="path to services.toml")
    serve.add_argument("--listen", type=_address, help="ingress HOST:PORT (overrides daemon.listen)")
    serve.add_argument(
        "--metrics-listen",
        type=_metrics_address,
        default=False,
        help="admin HOST:PORT, or '' to disable (overrides daemon.metrics_listen)",
    )
    serve.add_argument("--log-format", choices=("console", "json"), help="overrides daemon.log_format")
    serve.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="event loop")
    check = sub.add_parser("check", help="validate the manifest and compile and start every module, then exit")
    check.add_argument("manifest", help="path to services.toml")
    status = sub.add_parser("status", help="show a running daemon's services, versions and last reloads")
    status.add_argument("manifest", nargs="?", default="services.toml", help="its services.toml (for the address)")
    status.add_argument("--url", help="the admin listener, e.g. http://127.0.0.1:9090 (overrides the manifest)")
    status.add_argument("--json", action="store_true", help="print the raw /status document")
    sub.add_parser("version", help="print the versions of micromono, wasmtime and the guest ABI")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            return _version()
        if args.command == "check":
            return _check(args.manifest)
        if args.command == "status":
            return _status(args)
        return _serve(args)
    except BrokenPipeError:
        # The reader went away (`micromono status | head`): nothing left to say to it, and no traceback. Point
        # stdout at /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _version() -> int:
    from ._accelerate import PATH_SUMMARY
    from .abi import ABI_VERSION
    from .engine import WASMTIME_VERSION

    print(f"micromono {__version__} (wasmtime {WASMTIME_VERSION}, guest ABI v{ABI_VERSION})")
    print(f"compiled path: {PATH_SUMMARY}")  # the optional compiled path (README): in use, or why not
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from . import log
    from .daemon import run

    try:
        config = load_config(args.manifest)
    except MicromonoError as exc:
        print(f"micromono: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE
    config = override_addresses(config, listen=args.listen, metrics_listen=args.metrics_listen)
    log.configure(args.log_format or config.daemon.log_format, config.daemon.log_level)
    try:
        return run(config, loop=args.loop)
    except MicromonoError as exc:
        print(f"micromono: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE


def _status(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    url = args.url
    if url is None:
        try:
            config = load_config(args.manifest)
        except MicromonoError as exc:
            print(f"micromono: {exc}", file=sys.stderr)
            return EXIT_PROBLEMS
        if config.daemon.metrics_listen is None:
            print(
                f"micromono: {args.manifest} disables metrics_listen, so there is no /status; pass --url",
                file=sys.stderr,
            )
            return EXIT_PROBLEMS
        url = f"http://{config.daemon.metrics_listen}"
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=5) as response:
            document = json.load(response)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"micromono: cannot read {url}/status ({exc}); is the daemon running?", file=sys.stderr)
        return EXIT_PROBLEMS
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"{document['state']}, ingress {', '.join(document['ingress'])}")
    print(
        f"{'service':<16} {'version':<16} {'instances':>9} {'in flight':>9} {'queued':>7} {'ok':>9} {'failed':>7}"
        "  last reload"
    )
    for s in document["services"]:
        last = s.get("last_reload") or {}
        reload = f"{last.get('outcome', '-')} {last.get('reason', '')}".strip()
        print(
            f"{s['name']:<16} {s['version']:<16} {s['instances']['live']:>4}/{s['instances']['max']:<4} "
            f"{s['in_flight']:>9} {s['mailbox']['queued']:>7} {s['calls']['ok']:>9} {s['calls']['failed']:>7}  {reload}"
        )
    for d in document.get("draining", []):
        print(f"draining: {d['name']} {d['version']} ({d['in_flight']} in flight)")
    manifest = document.get("reload", {}).get("manifest")
    if manifest:
        print(f"services.toml: {manifest['outcome']} {manifest['reason']}".rstrip())
    return EXIT_OK


def _check(manifest: str) -> int:
    """Load the manifest exactly as `serve` does (`Daemon.load()`: placement, compile, instantiate) but bind no
    listener and watch no file; then shut down. What passes here starts under `serve`."""
    from . import log
    from .daemon import Daemon

    log.configure("console", "warning")
    try:
        config = load_config(manifest)
    except MicromonoError as exc:
        print(f"micromono: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS

    async def check() -> list[str]:
        daemon = Daemon(config)
        await daemon.load()
        try:
            return [f"  {s.name:<20} {s.version:<16} {s.spec.wasm}" for s in daemon.router.services()]
        finally:
            await daemon.shutdown()

    try:
        lines = asyncio.run(check())
    except MicromonoError as exc:
        print(f"micromono: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    from ._accelerate import PATH_SUMMARY

    print(f"{manifest}: ok, {len(lines)} service{'s' if len(lines) != 1 else ''}")
    print("\n".join(lines))
    print(f"compiled path: {PATH_SUMMARY}")
    return EXIT_OK


def override_addresses(config: Config, *, listen: Address | None, metrics_listen: Address | None | bool) -> Config:
    """`config` with the listen addresses replaced (the `serve` command's --listen / --metrics-listen).

    `metrics_listen=False` leaves it as configured; None disables the admin listener.
    """
    daemon = config.daemon
    if listen is not None:
        daemon = dataclasses.replace(daemon, listen=listen)
    if metrics_listen is not False:
        daemon = dataclasses.replace(daemon, metrics_listen=metrics_listen)  # type: ignore[arg-type]
    return dataclasses.replace(config, daemon=daemon)


if __name__ == "__main__":
    sys.exit(main())
