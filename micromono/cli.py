"""The `micromono` command: a thin argparse shim over `config`, `daemon` and `log` (STYLE rule 12).

`new` writes a service skeleton from a template (scaffold.py). `check` runs the daemon's own `Daemon.load()`
(placement, compile, instantiate) and binds nothing, so check and `serve` cannot disagree about a manifest. `status`
and `actors` read a running daemon's admin listener (the manifest's `metrics_listen`, or `--url`): `/status`, and
the actor pages `/actors/<service>[/<key>]` (admin.py).

Only this module configures logging, picks the event loop and turns a `MicromonoError` into a one-line (or
one-block) message on stderr with an exit code. Unexpected exceptions keep their traceback.

Exit codes:
    0  success (serve: stopped by SIGINT/SIGTERM after a graceful shutdown, SIGHUP reloads the manifest; check:
       everything is valid)
    1  check found problems (the manifest, a module, or a start-up setting such as daemon.cpu or an OS limit);
       status or actors could not reach the daemon; actors named an unknown actor service or key; new could not
       write the service (its directory is not empty, no SDK found)
    2  usage error (bad command-line arguments, such as an invalid service name for new)
    3  serve could not start (invalid manifest, a module that does not load, a port that cannot be bound)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import shlex
import signal
import sys
import time
from typing import Any, Final

from . import __version__
from .config import LOG_FORMATS, LOG_OUTPUTS, Address, Config, load_config
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


def _limit(text: str) -> int:
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 10_000:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected an integer from 1 to 10000, got {text!r}")


def _service_name(text: str) -> str:
    from .config import service_name_problem

    if (problem := service_name_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _language(text: str) -> str:
    from .scaffold import LANGUAGES, PENDING

    if text in PENDING:
        raise argparse.ArgumentTypeError(PENDING[text])
    if text not in LANGUAGES:
        *others, last = LANGUAGES
        raise argparse.ArgumentTypeError(f"unknown language {text!r}: use {', '.join(others)} or {last}")
    return text


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
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="overrides daemon.log_format")
    serve.add_argument("--log-output", choices=LOG_OUTPUTS, help="overrides daemon.log_output (stderr or stdout)")
    serve.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="event loop")
    check = sub.add_parser("check", help="validate the manifest and compile and start every module, then exit")
    check.add_argument("manifest", help="path to services.toml")
    status = sub.add_parser("status", help="show a running daemon's services, versions and last reloads")
    status.add_argument("manifest", nargs="?", default="services.toml", help="its services.toml (for the address)")
    status.add_argument("--url", help="the admin listener, e.g. http://127.0.0.1:19090 (overrides the manifest)")
    status.add_argument("--json", action="store_true", help="print the raw /status document")
    actors = sub.add_parser("actors", help="list a running actor service's actors, or show one and its entries")
    actors.add_argument("service", help="the actor service")
    actors.add_argument("key", nargs="?", help="show this actor: its record and its stored entries")
    actors.add_argument("--limit", type=_limit, help="actors (or entries) to show, 1 to 10000 (default 100)")
    actors.add_argument("--after", metavar="KEY", help="list the actors after KEY (the last page says which)")
    actors.add_argument("--manifest", default="services.toml", help="its services.toml (for the address)")
    actors.add_argument("--url", help="the admin listener, e.g. http://127.0.0.1:19090 (overrides the manifest)")
    actors.add_argument("--json", action="store_true", help="print the raw JSON document")
    sub.add_parser("version", help="print the versions of micromono, wasmtime and the guest ABI")
    from .scaffold import LANGUAGES, PENDING  # the template table: --lang's choices come from it

    new = sub.add_parser(
        "new",
        help="write a new service (source, Makefile, manifest) that answers a request out of the box",
        description="Write a buildable service skeleton into ./NAME (or --dir): the source, a Makefile that builds "
        "build/NAME.wasm with micromono's SDK, a README, services.toml (a manifest serving it alone) and "
        "micromono.toml.snippet (its [services.NAME] table, to paste into an app's manifest). A service answers "
        "GET /NAME with 'hello from NAME'; a --keyed one is an actor counting visits per key at /NAME/<key>.",
        epilog="example: micromono new hello --lang c && make -C hello && micromono serve hello/services.toml",
    )
    new.add_argument("name", metavar="NAME", type=_service_name, help="the service name, as in [services.NAME]")
    new.add_argument(
        "--lang",
        required=True,
        type=_language,
        metavar="{" + ",".join([*LANGUAGES, *PENDING]) + "}",
        help="the guest language" + (f" ({' and '.join(PENDING)} arrive with their SDKs)" if PENDING else ""),
    )
    new.add_argument("--keyed", action="store_true", help='an actor (kind = "actor"): routes /NAME/{key}, storage')
    new.add_argument("--dir", metavar="PATH", help="write into PATH instead of ./NAME (empty or missing)")
    new.add_argument("--sdk", metavar="DIR", help="the SDK directory the Makefile uses (default: micromono's sdk/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "actors" and args.key is not None and args.after is not None:
        parser.error("--after pages through a listing: it does not go with KEY")
    try:
        if args.command == "version":
            return _version()
        if args.command == "check":
            return _check(args.manifest)
        if args.command == "status":
            return _status(args)
        if args.command == "actors":
            return _actors(args)
        if args.command == "new":
            return _new(args)
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


def _new(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .scaffold import LANGUAGES, NewServiceError, create, find_sdk

    lang = LANGUAGES[args.lang]
    directory = Path(args.dir if args.dir is not None else args.name)
    command = shlex.join(["micromono", "new", args.name, "--lang", args.lang] + ["--keyed"] * args.keyed)
    try:
        sdk = Path(args.sdk).resolve() if args.sdk is not None else find_sdk(lang)
        created = create(
            args.name,
            lang,
            keyed=args.keyed,
            directory=directory,
            sdk=sdk,
            python=sys.executable,
            manifest_dir=Path.cwd(),
            command=command,
        )
    except NewServiceError as exc:
        print(f"micromono: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    # Paths as the user would type them: relative when under the current directory.
    cwd = Path.cwd()
    where = created.directory.relative_to(cwd) if created.directory.is_relative_to(cwd) else created.directory
    kind = "actor" if args.keyed else "service"
    print(f"Created the {lang.title} {kind} {args.name} in {where}/:")
    for path in created.files:
        print(f"  {where / path}")
    print("Build it and serve it alone:")
    print(f"  make -C {shlex.quote(str(where))}")
    print(f"  micromono serve {shlex.quote(str(where / 'services.toml'))}")
    urls = [f"curl http://127.0.0.1:8080{url_path}" for url_path, _ in created.requests]
    for url, (_, body) in zip(urls, created.requests, strict=True):
        print(f"  {url:<{max(map(len, urls))}}  # {body}")
    print(f"Or paste {where / 'micromono.toml.snippet'} into an app's services.toml. More in {where / 'README.md'}.")
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
    log_output = args.log_output or config.daemon.log_output
    log.configure(
        args.log_format or config.daemon.log_format,
        config.daemon.log_level,
        sys.stdout if log_output == "stdout" else sys.stderr,
    )
    try:
        return run(config, loop=args.loop)
    except MicromonoError as exc:
        print(f"micromono: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE


class _AdminFailed(Exception):
    """The admin listener could not be asked, or refused (the message says why, for stderr)."""


def _admin_url(manifest: str, url: str | None) -> str:
    """The admin listener's base URL: `url`, or the manifest's `metrics_listen`."""
    if url is not None:
        return url.rstrip("/")
    try:
        config = load_config(manifest)
    except MicromonoError as exc:
        raise _AdminFailed(str(exc)) from None
    if config.daemon.metrics_listen is None:
        raise _AdminFailed(f"{manifest} disables metrics_listen, so there is no admin listener; pass --url")
    return f"http://{config.daemon.metrics_listen}"


def _get(base: str, path: str) -> Any:
    """The JSON document at `base + path`.

    Raises:
        _AdminFailed: the daemon did not answer, or answered an error (its message, when it sent one).
    """
    import urllib.error  # here, not at the top: urllib.request is slow to import, and only these commands use it
    import urllib.request

    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["message"]
        except (ValueError, KeyError, TypeError):
            message = f"{base}{path} answered {exc.code} {exc.reason}"
        raise _AdminFailed(message) from None
    except (OSError, ValueError) as exc:
        raise _AdminFailed(f"cannot read {base}{path} ({exc}); is the daemon running?") from None


def _status(args: argparse.Namespace) -> int:
    try:
        document = _get(_admin_url(args.manifest, args.url), "/status")
    except _AdminFailed as exc:
        print(f"micromono: {exc}", file=sys.stderr)
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
    for s in document["services"]:
        if (a := s.get("actors")) is not None:
            print(
                f"actors of {s['name']}: {a['live']} live, {a['known']} with storage ({a['storage_bytes']} bytes), "
                f"{a['queued']} queued, {a['alarms_pending']} alarms pending, {a['websockets']} WebSockets open"
            )
    for d in document.get("draining", []):
        print(f"draining: {d['name']} {d['version']} ({d['in_flight']} in flight)")
    manifest = document.get("reload", {}).get("manifest")
    if manifest:
        print(f"services.toml: {manifest['outcome']} {manifest['reason']}".rstrip())
    return EXIT_OK


def _actors(args: argparse.Namespace) -> int:
    import urllib.parse

    path = "/actors/" + urllib.parse.quote(args.service, safe="")
    query = {"limit": args.limit, "after": args.after}
    if args.key is not None:
        path += "/" + urllib.parse.quote(args.key, safe="")
    if any(v is not None for v in query.values()):
        path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    try:
        document = _get(_admin_url(args.manifest, args.url), path)
    except _AdminFailed as exc:
        print(f"micromono: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    if args.json:
        print(json.dumps(document, indent=2))
    elif args.key is not None:
        _print_actor(args.service, document)
    else:
        _print_actors(document)
    return EXIT_OK


def _print_actors(document: dict[str, Any]) -> None:
    """An actor page as a table: key, state, stored bytes, last activity, alarm; then how to get the next page."""
    now = time.time()
    rows = document["actors"]
    width = min(48, max([3, *(len(_shown(r["key"])) for r in rows)]))
    print(f"{document['service']}: {document['live']} live, {document['known']} with storage")
    print(f"{'key':<{width}} {'state':<10} {'bytes':>10} {'queued':>6}  {'last active':<12} alarm")
    for r in rows:
        active = _ago(now - r["last_active"]) if r["last_active"] is not None else "never"
        state = "live" if r["live"] else "hibernated"
        print(
            f"{_shown(r['key']):<{width}} {state:<10} {r['bytes']:>10} {r['queued']:>6}  {active:<12} "
            f"{_when(r['alarm_ms'])}"
        )
    if document["next"] is not None:
        print(f"more: micromono actors {shlex.quote(document['service'])} --after {shlex.quote(document['next'])}")


def _print_actor(service: str, r: dict[str, Any]) -> None:
    """One actor: its record, then its entries (`key = value`, base64 marked as such)."""
    state = "live" if r["live"] else "hibernated"
    print(f"{service}/{_shown(r['key'])}: {state}, {r['bytes']} bytes stored, schema {r['schema_version']}")
    if r["last_active"] is not None:
        stamp = datetime.datetime.fromtimestamp(r["last_active"], datetime.UTC).isoformat(timespec="seconds")
        print(f"last active: {stamp} ({_ago(time.time() - r['last_active'])})")
    else:
        print("last active: never committed")
    print(f"alarm: {_when(r['alarm_ms'])}")
    print(f"queued: {r['queued']}")
    more = "; more not shown (--limit)" if r["truncated"] else ""
    print(f"entries ({len(r['entries'])}{more}):")
    for entry in r["entries"]:
        print(f"  {_entry(entry['key'])} = {_entry(entry['value'])}")


def _shown(text: str) -> str:
    """Text as one printable line (a key or value with control characters in quotes, escaped)."""
    return text if text.isprintable() else repr(text)


def _entry(value: str | dict[str, str]) -> str:
    return _shown(value) if isinstance(value, str) else f"base64:{value['base64']}"


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds")


def _ago(seconds: float) -> str:
    """A duration in the past, roughly: `42s ago`, `5m ago`, `3h ago`, `12d ago`."""
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


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
