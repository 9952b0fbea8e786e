"""micromono.guestlog: the per-service guest-log budget on a fake clock, long lines cut short, the dropped-line
warning, and the dropped counters in the Prometheus text."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from conftest import fixture, http, make_config, running
from micromono.guestlog import MAX_LOG_LINE, SUMMARY_SECONDS, GuestLog, dropped_counts
from micromono.metrics import ServiceCounters, Snapshot, reference_text, render


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def guest_log(rate: float = 100.0, burst: int = 200, now: float = 1000.0) -> tuple[GuestLog, FakeClock]:
    clock = FakeClock(now)
    return GuestLog(rate, burst, clock), clock


def emitted(logs: list[dict[str, Any]], event: str = "guest.log") -> list[str]:
    return [entry["message"] for entry in logs if entry["event"] == event]


def flood(budget: GuestLog, lines: int, message: bytes = b"line") -> None:
    for _ in range(lines):
        budget.emit("svc", "v1", 1, message)


# --- the budget ---------------------------------------------------------------------------------------------------


def test_lines_within_the_burst_all_go_through_as_events() -> None:
    """Under budget every line is a guest.log event with the service, the version, its level and its text."""
    budget, _ = guest_log()
    with capture_logs() as logs:
        for level in (0, 1, 2, 3, 7, -5):
            budget.emit("svc", "v1", level, f"at {level}".encode())
        flood(budget, 144)
    assert len(logs) == 150
    assert logs[:6] == [
        {"event": "guest.log", "service": "svc", "version": "v1", "message": f"at {level}", "log_level": name}
        for level, name in ((0, "debug"), (1, "info"), (2, "warning"), (3, "error"), (7, "info"), (-5, "info"))
    ]
    assert (budget.dropped, budget.dropped_bytes) == (0, 0)


def test_invalid_utf8_is_replaced_not_refused() -> None:
    """A line that is not UTF-8 is written with replacement characters, as before the budget."""
    budget, _ = guest_log()
    with capture_logs() as logs:
        budget.emit("svc", "v1", 1, b"caf\xe9 ok")
    assert emitted(logs) == ["caf\ufffd ok"]


def test_a_burst_then_every_further_line_is_dropped_and_counted() -> None:
    """A full bucket lets exactly `burst` lines through at once; the rest are counted in lines and bytes."""
    budget, _ = guest_log(rate=100.0, burst=200)
    with capture_logs() as logs:
        flood(budget, 250, b"0123456789")
    assert len(emitted(logs)) == 200
    assert [entry["event"] for entry in logs] == ["guest.log"] * 200  # no warning: no line went through after the drops
    assert (budget.dropped, budget.dropped_bytes) == (50, 500)


def test_the_bucket_refills_at_log_rate_up_to_log_burst() -> None:
    """After the burst is spent, `log_rate` lines a second come back, and a long quiet spell gives back only
    `log_burst`: never more."""
    budget, clock = guest_log(rate=100.0, burst=200)
    flood(budget, 200)
    with capture_logs() as logs:
        flood(budget, 1)
        clock.now += 1.0
        flood(budget, 150)  # 100 of them refilled
        clock.now += 0.25
        flood(budget, 40)  # 25
        clock.now += 0.001
        flood(budget, 1)  # a tenth of a line: not yet
        clock.now += 0.009
        flood(budget, 1)  # the whole line
        clock.now += 3600
        flood(budget, 300)  # a full bucket, no more
    assert len(emitted(logs)) == 100 + 25 + 1 + 200
    assert budget.dropped == 1 + 50 + 15 + 1 + 100


def test_a_steady_rate_at_log_rate_is_never_dropped() -> None:
    """A guest that logs exactly at log_rate, for longer than its burst would last, loses nothing."""
    budget, clock = guest_log(rate=3.0, burst=1)
    for _ in range(3000):
        flood(budget, 1)
        clock.now += 1 / 3
    assert budget.dropped == 0


def test_a_dropped_line_is_not_decoded() -> None:
    """Over budget a line costs a comparison and two additions: it is never decoded (nor logged)."""

    class Watched(bytes):
        decoded = 0

        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            Watched.decoded += 1
            return super().decode(encoding, errors)

    budget, _ = guest_log(burst=3)
    with capture_logs() as logs:
        for _ in range(10):
            budget.emit("svc", "v1", 1, Watched(b"line"))
    assert (Watched.decoded, len(logs), budget.dropped) == (3, 3, 7)


def test_settings_out_of_range_are_refused() -> None:
    """A rate that is not > 0 or a burst below 1 is a programming error here: the manifest refuses them first."""
    for rate in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^rate must be > 0 lines per second, got "):
            GuestLog(rate, 10)
    with pytest.raises(ValueError, match=r"^burst must be >= 1 line, got 0$"):
        GuestLog(10.0, 0)


def test_repr_shows_the_settings_and_the_drops() -> None:
    budget, _ = guest_log(rate=2.5, burst=1)
    flood(budget, 3, b"abc")
    assert repr(budget) == "<GuestLog [2.5 lines/s, burst 1 | dropped: 2 lines, 6 bytes]>"


# --- long lines ---------------------------------------------------------------------------------------------------


def test_a_line_longer_than_max_log_line_is_cut_with_a_marker() -> None:
    """A long line keeps its first MAX_LOG_LINE bytes and says how many were cut; a line of exactly
    MAX_LOG_LINE bytes is whole."""
    budget, _ = guest_log()
    with capture_logs() as logs:
        budget.emit("svc", "v1", 1, b"x" * MAX_LOG_LINE)
        budget.emit("svc", "v1", 1, b"y" * (MAX_LOG_LINE + 1))
        budget.emit("svc", "v1", 1, b"z" * (1 << 20))
    assert MAX_LOG_LINE == 4096
    assert emitted(logs) == [
        "x" * 4096,
        "y" * 4096 + "... [1 bytes cut]",
        "z" * 4096 + f"... [{(1 << 20) - 4096} bytes cut]",
    ]


def test_a_long_line_is_cut_between_characters() -> None:
    """The cut never splits a UTF-8 character: it moves back to the character's first byte."""
    budget, _ = guest_log()
    line = b"a" * (MAX_LOG_LINE - 2) + "€".encode() + b"tail"  # the 3-byte euro sign spans the cut
    with capture_logs() as logs:
        budget.emit("svc", "v1", 1, line)
        budget.emit_output("svc", "v1", -1, line + b"\nshort\n")
    assert emitted(logs) == ["a" * (MAX_LOG_LINE - 2) + "... [7 bytes cut]"]
    assert emitted(logs, "guest.stdout") == ["a" * (MAX_LOG_LINE - 2) + "... [7 bytes cut]", "short"]


# --- WASI stdout and stderr ---------------------------------------------------------------------------------------


def test_each_line_of_an_output_chunk_is_an_event_and_counts() -> None:
    """A chunk of stdout/stderr is split into lines (\\n, \\r\\n or \\r; empty ones skipped), one event each, and
    each takes a line of the budget."""
    budget, _ = guest_log(rate=1.0, burst=10)
    with capture_logs() as logs:
        budget.emit_output("svc", "v1", -1, b"one\r\ntwo\n\n\nthree\rfour")
        budget.emit_output("svc", "v1", -2, b"oops\n")
        budget.emit_output("svc", "v1", -1, b"\n\n")  # nothing but line ends: nothing, and no budget
    assert [(e["event"], e["message"], e["log_level"]) for e in logs] == [
        ("guest.stdout", "one", "info"),
        ("guest.stdout", "two", "info"),
        ("guest.stdout", "three", "info"),
        ("guest.stdout", "four", "info"),
        ("guest.stderr", "oops", "info"),
    ]
    assert {e["service"] for e in logs} == {"svc"} and {e["version"] for e in logs} == {"v1"}
    with capture_logs() as logs:
        flood(budget, 10)
    assert len(emitted(logs)) == 5  # the chunks took the other five


def test_an_output_chunk_over_budget_is_cut_where_the_budget_ends() -> None:
    """The first lines of a chunk that fit go through; the rest are counted, lines and bytes, without decoding."""
    budget, clock = guest_log(rate=1.0, burst=3)
    chunk = b"".join(b"line %d\n" % i for i in range(8)) + b"\n"
    with capture_logs() as logs:
        budget.emit_output("svc", "v1", -1, chunk)
    assert emitted(logs, "guest.stdout") == ["line 0", "line 1", "line 2"]
    assert (budget.dropped, budget.dropped_bytes) == (5, 5 * 6)
    with capture_logs() as logs:
        budget.emit_output("svc", "v1", -2, chunk)  # the bucket is empty: all of it
    assert logs == []
    assert (budget.dropped, budget.dropped_bytes) == (13, 13 * 6)
    clock.now += 2.0
    with capture_logs() as logs:
        budget.emit_output("svc", "v1", -1, chunk)
    assert emitted(logs, "guest.stdout") == ["line 0", "line 1"]


def test_dropped_output_bytes_leave_out_every_line_end() -> None:
    """The bytes counted for dropped output lines are their text: no \\n, \\r or \\r\\n."""
    budget, _ = guest_log(rate=1.0, burst=1)
    with capture_logs() as logs:
        budget.emit_output("svc", "v1", -1, b"ab\r\ncd\n\nef\rghi")
    assert emitted(logs, "guest.stdout") == ["ab"]
    assert (budget.dropped, budget.dropped_bytes) == (3, len("cdefghi"))


def test_lines_and_chunks_share_one_budget_and_agree_on_it() -> None:
    """emit_output counts a chunk's lines exactly as emit would count them one by one, at any point of the
    refill."""
    for elapsed in (0.0, 0.004, 0.01, 0.0149, 0.33, 1.0, 7.77):
        one, one_clock = guest_log(rate=100.0, burst=20)
        chunked, chunked_clock = guest_log(rate=100.0, burst=20)
        flood(one, 20)
        chunked.emit_output("svc", "v1", -1, b"line\n" * 20)
        one_clock.now += elapsed
        chunked_clock.now += elapsed
        flood(one, 25)
        chunked.emit_output("svc", "v1", -1, b"line\n" * 25)
        assert (one.dropped, one.dropped_bytes) == (chunked.dropped, chunked.dropped_bytes), elapsed


# --- the dropped-lines warning ------------------------------------------------------------------------------------


def test_the_next_line_through_after_drops_is_preceded_by_one_warning() -> None:
    """guest.log.dropped names the service and version, the lines and bytes dropped since the last warning, the
    settings and the one to raise; then comes the line itself."""
    budget, clock = guest_log(rate=10.0, burst=2)
    with capture_logs() as logs:
        flood(budget, 5, b"0123456789")
        clock.now += 0.1
        budget.emit("svc", "v2", 2, b"after")
    warning = {
        "event": "guest.log.dropped",
        "log_level": "warning",
        "service": "svc",
        "version": "v2",
        "lines": 3,
        "bytes": 30,
        "log_rate": 10.0,
        "log_burst": 2,
        "hint": "the guest wrote more log lines than services.svc.log_rate (10 a second, bursts of 2) lets through: "
        "raise log_rate (or log_burst) in services.toml, or log less",
    }
    assert logs[2:] == [
        warning,
        {"event": "guest.log", "service": "svc", "version": "v2", "message": "after", "log_level": "warning"},
    ]


def test_the_warning_comes_at_most_once_per_summary_seconds() -> None:
    """Under a steady flood, one warning per SUMMARY_SECONDS, each with the drops since the one before."""
    budget, clock = guest_log(rate=8.0, burst=1)  # eighths of a second: exact in binary floating point
    with capture_logs() as logs:
        for _ in range(24):  # 3 s of 8 lines every 1/8 s: one of each eight goes through
            flood(budget, 8)
            clock.now += 0.125
    warnings = [entry["lines"] for entry in logs if entry["event"] == "guest.log.dropped"]
    assert SUMMARY_SECONDS == 1.0
    assert len(emitted(logs)) == 24
    assert warnings == [7, 56, 56]  # at 0.125 s, 1.125 s and 2.125 s
    assert budget.dropped == 24 * 7  # the last 49 wait for a later line (and are in the metric already)


def test_no_warning_without_drops_and_a_warning_before_output_lines_too() -> None:
    """Nothing dropped, nothing to say; drops are reported before stdout lines as before guest.log lines."""
    budget, clock = guest_log(rate=1.0, burst=2)
    with capture_logs() as logs:
        flood(budget, 2)
    assert [entry["event"] for entry in logs] == ["guest.log", "guest.log"]
    with capture_logs() as logs:
        budget.emit_output("svc", "v1", -1, b"a\nb\n")  # dropped
        clock.now += 1.0
        budget.emit_output("svc", "v1", -2, b"c\nd\n")  # c goes through, d is dropped
    assert [(entry["event"], entry.get("lines")) for entry in logs] == [
        ("guest.log.dropped", 2),
        ("guest.stderr", None),
    ]
    assert budget.dropped == 3


# --- hot swap -----------------------------------------------------------------------------------------------------


def test_a_successor_takes_over_the_bucket_and_the_counts() -> None:
    """A new version that inherits from the old one goes on with its counters (the metric never falls back), an
    as-empty bucket at its own settings, and the drops the old one has not reported yet."""
    old, clock = guest_log(rate=10.0, burst=5)
    flood(old, 8, b"abc")  # 5 through, 3 dropped and not reported yet
    new = GuestLog(20.0, 3, clock)
    new.inherit(old)
    assert (new.dropped, new.dropped_bytes) == (3, 9)
    with capture_logs() as logs:
        flood(new, 1)  # the bucket is still empty, whatever the new settings
        clock.now += 0.1  # a line for each of them
        old.emit("svc", "v1", 1, b"late")  # the old version, finishing a call: it no longer reports the drops
        new.emit("svc", "v2", 1, b"new")
    assert [(entry["event"], entry["version"], entry.get("lines")) for entry in logs] == [
        ("guest.log", "v1", None),
        ("guest.log.dropped", "v2", 4),
        ("guest.log", "v2", None),
    ]
    assert (new.dropped, new.dropped_bytes) == (4, 13)


def test_a_successor_bucket_is_capped_at_its_own_burst() -> None:
    """A successor with a smaller burst starts at most that far from full."""
    old, clock = guest_log(rate=1.0, burst=100)
    flood(old, 100)  # empty: 100 s from full
    new = GuestLog(1.0, 2, clock)
    new.inherit(old)
    clock.now += 2.0
    with capture_logs() as logs:
        flood(new, 5)
    assert len(emitted(logs)) == 2


# --- the metric ---------------------------------------------------------------------------------------------------


def service_counters(name: str, dropped: tuple[int, int]) -> ServiceCounters:
    return ServiceCounters(
        name,
        f"{name}-v1",
        "ab" * 32,
        True,
        (),
        0.0,
        queued=0,
        capacity=64,
        rejected=0,
        shed=0,
        live=1,
        traps=0,
        memory_sizes=[65536],
        memory_limit=64 << 20,
        quarantines=0,
        preempted=0,
        ok=1,
        failed=0,
        log_dropped=dropped[0],
        log_dropped_bytes=dropped[1],
    )


def test_dropped_counts_read_the_services_guest_log() -> None:
    """metrics.py reads (lines, bytes) of a service version's GuestLog through dropped_counts."""

    class Holder:
        def __init__(self, guest_log: GuestLog) -> None:
            self.guest_log = guest_log

    budget, _ = guest_log(burst=1)
    flood(budget, 4, b"12345")
    assert dropped_counts(Holder(budget)) == (3, 15)


def test_the_dropped_counters_in_the_prometheus_text() -> None:
    """micromono_guest_log_dropped_total and _bytes_total, per service, parse with prometheus_client's parser
    and match its own rendering of the same snapshot."""
    busy, _ = guest_log(burst=1)
    flood(busy, 1001, b"x" * 1000)
    snapshot = Snapshot(
        services=[service_counters("busy", (busy.dropped, busy.dropped_bytes)), service_counters("quiet", (0, 0))],
        retired=[],
        edges=[],
        refused=[],
        statuses=[],
        connections=0,
        reloads=[],
    )
    text = render(snapshot).decode()
    assert text == reference_text(snapshot).decode()
    parsed = {family.name: family for family in text_string_to_metric_families(text)}
    lines, nbytes = parsed["micromono_guest_log_dropped"], parsed["micromono_guest_log_dropped_bytes"]
    assert (lines.type, nbytes.type) == ("counter", "counter")
    assert lines.documentation == "Guest log lines dropped over the service's log_rate."
    assert [(s.name, s.labels, s.value) for s in lines.samples] == [
        ("micromono_guest_log_dropped_total", {"service": "busy"}, 1000.0),
        ("micromono_guest_log_dropped_total", {"service": "quiet"}, 0.0),
    ]
    assert [(s.name, s.labels, s.value) for s in nbytes.samples] == [
        ("micromono_guest_log_dropped_bytes_total", {"service": "busy"}, 1e6),
        ("micromono_guest_log_dropped_bytes_total", {"service": "quiet"}, 0.0),
    ]


def scrape(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("service", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("micromono_guest_log_dropped")
    }


async def test_a_daemon_exports_the_dropped_counters_for_every_service(tmp_path: Path) -> None:
    """A real daemon's /metrics has both counters for each service, at 0 while nothing was dropped."""
    config = make_config(
        tmp_path,
        {
            "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"]},
            "chatty": {"wasm": fixture("chatty.wat"), "routes": ["/chatty"]},
        },
    )
    async with running(config) as daemon:
        assert (await http(daemon.addresses[0], "POST", "/echo", b"x")).status == 200
        assert daemon.metrics_address is not None
        got = scrape((await http(daemon.metrics_address, "GET", "/metrics")).body.decode())
    assert got == {
        ("micromono_guest_log_dropped_total", "echo"): 0.0,
        ("micromono_guest_log_dropped_total", "chatty"): 0.0,
        ("micromono_guest_log_dropped_bytes_total", "echo"): 0.0,
        ("micromono_guest_log_dropped_bytes_total", "chatty"): 0.0,
    }


async def test_a_flooding_guest_is_held_to_its_budget_end_to_end(tmp_path: Path) -> None:
    """Through the real host imports: a guest writing 20 log lines and 3 stdout lines against log_burst = 5 gets 5
    lines written; the other 18 are counted in /metrics."""
    config = make_config(
        tmp_path,
        {
            "chatty": {"wasm": fixture("chatty.wat"), "routes": ["/chatty"], "log_rate": 0.001, "log_burst": 5},
        },
    )
    async with running(config) as daemon:
        with capture_logs() as logs:
            response = await http(daemon.addresses[0], "POST", "/chatty", struct.pack("<I", 20))
        assert daemon.metrics_address is not None
        got = scrape((await http(daemon.metrics_address, "GET", "/metrics")).body.decode())
    assert response.status == 200
    assert [entry["event"] for entry in logs if entry["event"].startswith("guest.")] == ["guest.log"] * 5
    assert got[("micromono_guest_log_dropped_total", "chatty")] == 15 + 3
    assert got[("micromono_guest_log_dropped_bytes_total", "chatty")] == 15 * len("chatty line") + len("onetwothree")


async def test_a_hot_swap_hands_the_budget_and_the_counts_on(tmp_path: Path) -> None:
    """A new version of a service goes on from its predecessor's dropped counts (the metric does not fall back to 0)
    and from its spent bucket (a reload does not let a flooding guest write another burst)."""
    source = fixture("chatty.wat").read_text()
    wat = tmp_path / "chatty.wat"
    wat.write_text(source)
    config = make_config(
        tmp_path,
        {
            "chatty": {"wasm": wat, "routes": ["/chatty"], "log_rate": 0.001, "log_burst": 5},
        },
    )
    async with running(config) as daemon:
        first = daemon.router.slots["chatty"].current
        assert first is not None
        assert (await http(daemon.addresses[0], "POST", "/chatty", struct.pack("<I", 20))).status == 200
        assert first.guest_log.dropped == 18
        replaced = tmp_path / "chatty.wat.tmp"
        replaced.write_text(source.replace('"chatty line"', '"chatty LINE"'))
        replaced.replace(wat)
        for _ in range(500):
            if daemon.router.slots["chatty"].current is not first:
                break
            await asyncio.sleep(0.02)
        second = daemon.router.slots["chatty"].current
        assert second is not None and second is not first
        with capture_logs() as logs:
            assert (await http(daemon.addresses[0], "POST", "/chatty", struct.pack("<I", 1))).status == 200
        assert daemon.metrics_address is not None
        got = scrape((await http(daemon.metrics_address, "GET", "/metrics")).body.decode())
    assert [entry["event"] for entry in logs if entry["event"].startswith("guest.")] == []
    assert got[("micromono_guest_log_dropped_total", "chatty")] == 18 + 1 + 3
