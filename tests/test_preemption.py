"""Every guest is preemptible: a guest that runs long, in any way, gives the event loop back while it runs, so the
other services keep answering. Each case runs a hostile service beside a healthy one (`echo.wat` on /healthy) in a
real in-process daemon over loopback sockets, and checks what does not depend on the machine's speed:

- the hostile guest is *seen running* from the event loop: the test looks at the daemon's /status document
  (`Daemon.status()`, `in_flight`) at every turn of the loop and finds the hostile service inside a guest call. A
  guest that runs synchronously on the loop thread can never be seen this way (by the time the loop turns again its
  run is over), so this is what fails, whatever the machine's speed, when a guest holds the loop;
- the healthy service answers requests sent while the hostile guest runs, each within HEALTHY_WITHIN_S (far below
  the hostile deadline), and every one of them correctly;
- the hostile request gets its documented answer, the daemon stays up, and the hostile service answers a normal
  request afterwards.

Each case measures the hostile service's first long run, in a daemon of its own: until 2026-12 a service whose run
took over 10 ms was moved to an offload thread from then on (`daemon.offload_after`), where its later runs could be
seen running. The storm and log cases note where that still shows on the code before preemption.

The cases are the issue's table: an endless loop (and shutdown while it spins), an endless loop inside a nested call,
hot swaps to builds whose start function, `_initialize` or `mm_health` never return, 100,000 `send`s in one request,
a message that sends 1,000 messages to itself, a memory bomb and 1 MiB of guest log per request (fixtures:
hostile.wat, caller.wat, hostile_start.wat, hostile_init.wat, hostile_health.wat, spammer.wat).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from conftest import Client, Response, fixture, http, make_config, running
from micromono.daemon import Daemon

#: The generous bound on one healthy request while a neighbour misbehaves (it takes well under 1 ms alone).
HEALTHY_WITHIN_S = 2.0
#: How long to look for the hostile guest inside its call before concluding it held the loop for its whole run.
SEEN_WITHIN_S = 5.0
#: The daemon's graceful_timeout in the shutdown case, and what stopping may take beyond it.
GRACE_S = 1.0
STOP_SLACK_S = 5.0
#: How long a hot swap to a build that never starts may take to be rejected (the daemon bounds instantiation,
#: `_initialize` and `mm_health`: 10 s each at the time of writing).
REJECT_WITHIN_S = 30.0
DEADLINE_MESSAGE = "service 'hostile' ran past its deadline and was interrupted"
HELD = (
    "the hostile guest was never seen inside its call from the event loop: it held the loop for its whole run "
    "(guests are not preempted)"
)


def healthy() -> dict[str, object]:
    return {"wasm": fixture("echo.wat"), "routes": ["/healthy"]}


def spammer(**keys: object) -> dict[str, dict[str, object]]:
    """spammer.wat on /spammer (it sends to "sink" and to itself), its sink, and the healthy service."""
    return {
        "healthy": healthy(),
        "spammer": {"wasm": fixture("spammer.wat"), "routes": ["/spammer"], "calls": ["sink", "spammer"], **keys},
        "sink": {"wasm": fixture("echo.wat")},
    }


# --- looking at the daemon from the event loop --------------------------------------------------------------------


def service_status(daemon: Daemon, name: str) -> dict[str, Any]:
    """`name`'s entry in the /status document."""
    for entry in daemon.status()["services"]:
        if entry["name"] == name:
            return dict(entry)
    raise AssertionError(f"no service {name!r} in /status")


def in_flight(daemon: Daemon, name: str) -> int:
    """How many of `name`'s instances are inside a guest call right now (/status `in_flight`)."""
    return int(service_status(daemon, name)["in_flight"])


async def seen_running(daemon: Daemon, name: str, unless: asyncio.Future[Any] | None, within: float) -> float | None:
    """The loop time at which `name` was first seen inside a guest call, looking at every turn of the event loop; None
    if `unless` finished first or `within` seconds passed. See the module docstring for why this is the test of
    preemption that does not depend on the machine's speed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        if unless is not None and unless.done():
            return None
        if in_flight(daemon, name) > 0:
            return loop.time()
        await asyncio.sleep(0)
    return None


@dataclass
class Sample:
    """One healthy request: loop times sent and answered, whether the answer was right."""

    sent: float
    answered: float
    ok: bool
    detail: str = ""

    @property
    def latency(self) -> float:
        return self.answered - self.sent


@dataclass
class Neighbour:
    """A client of a well-behaved service: requests back to back on its own keep-alive connection, each timed."""

    address: tuple[str, int]
    path: str = "/healthy"
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Neighbour:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        client = await Client.connect(self.address)
        try:
            i = 0
            while not self._stop.is_set():
                body = b"%s %d" % (self.path.encode(), i)
                sent = loop.time()
                try:
                    response = await client.request("POST", self.path, body)
                except (TimeoutError, ConnectionError) as exc:
                    self.samples.append(Sample(sent, loop.time(), False, repr(exc)))
                    return
                ok = (response.status, response.body) == (200, body)
                self.samples.append(Sample(sent, loop.time(), ok, "" if ok else f"{response.status} {response.body!r}"))
                self._progress.set()
                i += 1
        finally:
            self._progress.set()
            await client.close()

    async def answered(self, n: int) -> None:
        """Wait until the neighbour has had `n` answers (or has stopped)."""
        while len(self.samples) < n and not (self._task is not None and self._task.done()):
            self._progress.clear()
            await asyncio.wait_for(self._progress.wait(), HEALTHY_WITHIN_S + 10)

    async def stop(self) -> list[Sample]:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, HEALTHY_WITHIN_S + 10)
        return self.samples

    def between(self, start: float, end: float) -> list[Sample]:
        """The requests sent at or after `start` and answered by `end` (loop times)."""
        return [s for s in self.samples if s.sent >= start and s.answered <= end]


def assert_all_answered(samples: list[Sample], what: str = "healthy") -> None:
    """Every request answered correctly, each within HEALTHY_WITHIN_S."""
    assert samples, f"the {what} service answered nothing"
    wrong = [s.detail for s in samples if not s.ok]
    assert wrong == [], f"the {what} service failed {len(wrong)} of {len(samples)} requests: {wrong[:3]}"
    slowest = max(s.latency for s in samples)
    assert slowest < HEALTHY_WITHIN_S, f"a {what} request took {slowest:.3f} s (bound {HEALTHY_WITHIN_S} s)"


async def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The admin listener's /metrics, parsed: (sample name, sorted labels) -> value."""
    assert daemon.metrics_address is not None
    response = await http(daemon.metrics_address, "GET", "/metrics")
    assert response.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.body.decode())
        for s in family.samples
    }


async def hostile_beside_neighbour(
    daemon: Daemon, service: str, requests: list[tuple[str, bytes]], *, neighbour_path: str = "/healthy"
) -> tuple[list[Response], float | None, float, Neighbour]:
    """Send `requests` (path, body) at once, each on a connection of its own, while a neighbour loads the healthy
    service. Returns their responses, when `service` was first seen running (None: never), when the last hostile
    answer arrived (loop time), and the neighbour (stopped)."""
    loop = asyncio.get_running_loop()
    neighbour = Neighbour(daemon.addresses[0], neighbour_path).start()
    await neighbour.answered(3)  # it has answered a few before the hostile work starts
    hostile = asyncio.gather(*(http(daemon.addresses[0], "POST", path, body) for path, body in requests))
    seen = await seen_running(daemon, service, hostile, SEEN_WITHIN_S)
    responses = await asyncio.wait_for(hostile, 60)
    ended = loop.time()
    await neighbour.stop()
    return list(responses), seen, ended, neighbour


# --- an endless loop ----------------------------------------------------------------------------------------------


async def test_an_endless_loop_holds_no_one_and_shutdown_interrupts_it(tmp_path: Path) -> None:
    """call_timeout = 30: while it spins, a healthy request on another connection is answered within 2 s; stopping
    the daemon does not wait for the spinning guest beyond graceful_timeout."""
    services = {
        "healthy": healthy(),
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], "call_timeout": 30},
    }
    config = make_config(tmp_path, services, daemon={"graceful_timeout": GRACE_S})
    loop = asyncio.get_running_loop()
    async with running(config) as daemon:
        addr = daemon.addresses[0]
        spin = asyncio.create_task(http(addr, "POST", "/hostile", b"l"))
        seen = await seen_running(daemon, "hostile", spin, SEEN_WITHIN_S)
        assert seen is not None, HELD
        # One request on a fresh connection while it spins...
        started = loop.time()
        answer = await http(addr, "POST", "/healthy", b"while it spins")
        took = loop.time() - started
        assert (answer.status, answer.body) == (200, b"while it spins")
        assert took < HEALTHY_WITHIN_S, f"the healthy answer took {took:.3f} s"
        # ... then a keep-alive client for a moment: all while the guest is still inside its call.
        neighbour = Neighbour(addr).start()
        await neighbour.answered(5)
        samples = await neighbour.stop()
        assert_all_answered(samples)
        assert len(samples) >= 5
        assert not spin.done() and in_flight(daemon, "hostile") == 1, "the spin ended early"
        assert daemon.status()["state"] == "serving"
        stopping = loop.time()
    stopped = loop.time() - stopping
    assert stopped < GRACE_S + STOP_SLACK_S, f"shutdown took {stopped:.1f} s with a guest spinning"
    # The spinning request ended with the daemon: an error answer or a closed connection, never left hanging.
    (outcome,) = await asyncio.wait_for(asyncio.gather(spin, return_exceptions=True), STOP_SLACK_S)
    assert isinstance(outcome, ConnectionError | OSError) or (isinstance(outcome, Response) and outcome.status >= 500)


async def test_an_endless_loop_is_interrupted_at_its_deadline_and_its_service_recovers(tmp_path: Path) -> None:
    timeout = 1.5
    services = {
        "healthy": healthy(),
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], "call_timeout": timeout},
    }
    async with running(make_config(tmp_path, services)) as daemon:
        loop = asyncio.get_running_loop()
        started = loop.time()
        (spin,), seen, ended, neighbour = await hostile_beside_neighbour(daemon, "hostile", [("/hostile", b"l")])
        assert seen is not None, HELD
        assert (spin.status, spin.json()["message"]) == (504, DEADLINE_MESSAGE)
        assert timeout <= ended - started < timeout + 5, f"the spin was answered after {ended - started:.2f} s"
        assert_all_answered(neighbour.samples)
        assert len(neighbour.between(seen, ended)) >= 3, "the healthy service answered little while the guest ran"
        # It recovers: a normal request is served (by a new instance: the interrupted one was discarded).
        assert (await http(daemon.addresses[0], "POST", "/hostile", b"fine")).body == b"fine"
        assert (await http(daemon.addresses[0], "POST", "/healthy", b"after")).body == b"after"


async def test_an_endless_loop_in_a_nested_call_is_preempted_mid_chain(tmp_path: Path) -> None:
    """front (caller.wat) calls hostile, which spins: both are inside their calls, front waiting on hostile, while the
    healthy service answers; front then gets MM_ERR_TIMEOUT (-5) from its call with the deadline message."""
    services = {
        "healthy": healthy(),
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["hostile"], "call_timeout": 30},
        "hostile": {"wasm": fixture("hostile.wat"), "call_timeout": 1.5},
    }
    spin = struct.pack("<iII", 1, 64, 7) + b"hostile" + b"l"  # caller.wat: 1 call to "hostile" with payload "l"
    async with running(make_config(tmp_path, services)) as daemon:
        loop = asyncio.get_running_loop()
        neighbour = Neighbour(daemon.addresses[0]).start()
        await neighbour.answered(3)
        chain = asyncio.ensure_future(http(daemon.addresses[0], "POST", "/front", spin))
        seen = await seen_running(daemon, "hostile", chain, SEEN_WITHIN_S)
        assert seen is not None, HELD
        assert in_flight(daemon, "front") == 1, "the caller should be inside its call, waiting on the callee"
        answer = await asyncio.wait_for(chain, 30)
        ended = loop.time()
        samples = await neighbour.stop()
        assert answer.status == 200
        code = struct.unpack("<i", answer.body[:4])[0]
        assert (code, answer.body[4:].decode()) == (-5, DEADLINE_MESSAGE)
        assert_all_answered(samples)
        assert len(neighbour.between(seen, ended)) >= 3, "the healthy service answered little while the chain ran"
        # Both recover.
        fine = await http(daemon.addresses[0], "POST", "/front", struct.pack("<iII", 1, 64, 7) + b"hostile" + b"fine")
        assert (fine.status, fine.body) == (200, struct.pack("<i", 4) + b"fine")


# --- hot swaps to builds that never start -------------------------------------------------------------------------


def wasm(path: Path) -> bytes:
    return wasmtime.wat2wasm(path.read_text())


def replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.mark.parametrize("build", ["hostile_start.wat", "hostile_init.wat", "hostile_health.wat"])
async def test_a_hot_swap_to_a_build_that_never_starts_is_rejected_while_everyone_is_served(
    tmp_path: Path, build: str
) -> None:
    """The service's file is replaced by a build whose start function, `_initialize` or `mm_health` loops forever.
    While the daemon tries to start it, the healthy service and the hostile service's old version keep answering;
    the new build is rejected (at its start-up deadline) and the old version keeps serving."""
    target = tmp_path / "hostile.wasm"
    target.write_bytes(wasm(fixture("echo.wat")))
    services = {"healthy": healthy(), "hostile": {"wasm": target, "routes": ["/hostile"], "call_timeout": 1.0}}
    async with running(make_config(tmp_path, services)) as daemon:
        addr = daemon.addresses[0]
        before = service_status(daemon, "hostile")["version"]
        loop = asyncio.get_running_loop()
        # Loop time and wall time together: the reload's result says when it was decided in wall time.
        wall_offset = time.time() - loop.time()
        neighbours = [Neighbour(addr).start(), Neighbour(addr, "/hostile").start()]
        for neighbour in neighbours:
            await neighbour.answered(3)
        written = loop.time()
        replace_atomically(target, wasm(fixture(build)))
        result: dict[str, Any] | None = None
        while loop.time() < written + REJECT_WITHIN_S:
            last = service_status(daemon, "hostile")["last_reload"]
            if last is not None:
                result = last
                break
            await asyncio.sleep(0.01)
        for neighbour in neighbours:
            await neighbour.stop()
        assert result is not None, f"no reload outcome within {REJECT_WITHIN_S} s"
        assert result["outcome"] == "rejected", result
        # Which phase never returned is named; the wording is the daemon's (adjust here if it changes).
        assert "deadline" in result["reason"] or "interrupt" in result["reason"], result["reason"]
        decided = result["at"] - wall_offset
        attempt = decided - written
        assert attempt >= 0.5, f"rejected after {attempt:.3f} s: it cannot have run into its deadline"
        # Requests sent in the second half of the attempt, answered before it was decided: the loop was not frozen.
        middle = written + attempt / 2
        healthy_samples, old_samples = (n.samples for n in neighbours)
        assert_all_answered(healthy_samples)
        assert_all_answered(old_samples, "hostile (old version)")
        assert len(neighbours[0].between(middle, decided)) >= 3, "the healthy service was not served meanwhile"
        assert len(neighbours[1].between(middle, decided)) >= 1, "the old version was not served meanwhile"
        # The old version keeps serving, and the outcome is counted and shown.
        assert service_status(daemon, "hostile")["version"] == before
        assert (await http(addr, "POST", "/hostile", b"still here")).body == b"still here"
        metrics = await scrape(daemon)
        assert metrics[("micromono_reloads_total", (("outcome", "rejected"), ("service", "hostile")))] == 1
        assert ("micromono_reloads_total", (("outcome", "swapped"), ("service", "hostile"))) not in metrics
        assert daemon.metrics_address is not None
        status = (await http(daemon.metrics_address, "GET", "/status")).json()
        (entry,) = [s for s in status["services"] if s["name"] == "hostile"]
        assert (entry["version"], entry["last_reload"]["outcome"]) == (before, "rejected")


# --- hostile through the host imports (spammer.wat) ---------------------------------------------------------------


async def test_a_hundred_thousand_sends_in_one_request(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, spammer())) as daemon:
        (flood,), seen, ended, neighbour = await hostile_beside_neighbour(daemon, "spammer", [("/spammer", b"n")])
        assert seen is not None, HELD
        assert_all_answered(neighbour.samples)
        assert len(neighbour.between(seen, ended)) >= 1, "the healthy service was not served while the sends ran"
        assert flood.status == 200 and len(flood.body) == 16, (flood.status, flood.body[:200])
        queued, overloaded, other, last = struct.unpack("<IIIi", flood.body)
        assert queued + overloaded + other == 100_000
        assert queued >= 1
        # SEND CAP (max_sends, 1,000 per entry by default; not finished when this was written): the sends past
        # what the sink's mailbox (64) or the cap takes are refused as MM_ERR_OVERLOADED (-3). Adjust here if not.
        assert other == 0 and last == -3, (queued, overloaded, other, last)
        assert queued <= 1000, f"{queued} sends queued by one request, past max_sends"
        # Every send that was queued is delivered, and nothing grew past the mailbox.
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while service_status(daemon, "sink")["mailbox"]["queued"] and loop.time() < end:
            await asyncio.sleep(0.01)
        sink = service_status(daemon, "sink")
        assert sink["mailbox"]["queued"] == 0 and sink["calls"]["ok"] == queued
        # It recovers.
        assert (await http(daemon.addresses[0], "POST", "/spammer", b"hello")).body == b"hello"


async def test_a_message_that_sends_a_thousand_messages_to_itself(tmp_path: Path) -> None:
    """spammer.wat's storm: each message "x" sends 1,000 more to its own mailbox (64), which stays full while the
    storm lasts (bounded here: 2 s after it started, its messages stop re-sending, and it dies out)."""
    storm_ms = 2000
    async with running(make_config(tmp_path, spammer())) as daemon:
        addr = daemon.addresses[0]
        loop = asyncio.get_running_loop()
        neighbour = Neighbour(addr).start()
        await neighbour.answered(3)
        started = await http(addr, "POST", "/spammer", b"x" + struct.pack("<I", storm_ms))
        assert (started.status, started.body) == (200, struct.pack("<i", 0))
        seen = await seen_running(daemon, "spammer", None, SEEN_WITHIN_S)
        # The storm is over when the mailbox stays empty and nothing runs for a moment.
        end = loop.time() + storm_ms / 1000 + 20
        quiet_since: float | None = None
        while loop.time() < end:
            entry = service_status(daemon, "spammer")
            if entry["mailbox"]["queued"] or entry["in_flight"]:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since > 0.2:
                break
            await asyncio.sleep(0.001)
        assert quiet_since is not None and loop.time() - quiet_since > 0.2, "the storm did not die out"
        samples = await neighbour.stop()
        assert seen is not None, HELD
        calls = service_status(daemon, "spammer")["calls"]
        assert calls["ok"] >= 20, f"only {calls['ok']} runs: no storm"
        # A message's 1,000 sends take a few milliseconds of CPU: none may run into its deadline (1 s).
        assert calls["failed"] == 0, f"{calls['failed']} storm messages failed (timed out?)"
        assert_all_answered(samples)
        assert len(neighbour.between(seen, quiet_since)) >= 3, "the healthy service answered little during the storm"
        # It recovers.
        assert (await http(addr, "POST", "/spammer", b"hello")).body == b"hello"


async def test_a_memory_bomb(tmp_path: Path) -> None:
    """One request grows a fresh instance to its 2 GiB limit one page at a time and touches every page: 32,768 grows
    and page faults, a run long enough to be seen from the loop (at 16 MiB it would be over in ~3 ms)."""
    pages = (2 << 30) >> 16
    async with running(make_config(tmp_path, spammer(memory_limit="2GiB"))) as daemon:
        (bomb,), seen, ended, neighbour = await hostile_beside_neighbour(daemon, "spammer", [("/spammer", b"g")])
        assert seen is not None, HELD
        assert_all_answered(neighbour.samples)
        assert len(neighbour.between(seen, ended)) >= 1, "the healthy service was not served while the bomb ran"
        assert (bomb.status, bomb.body) == (200, struct.pack("<I", pages))
        metrics = await scrape(daemon)
        assert metrics[("micromono_instances_at_memory_limit", (("service", "spammer"),))] == 1
        # It recovers: a normal request, and another bomb on the instance already at its limit.
        assert (await http(daemon.addresses[0], "POST", "/spammer", b"hello")).body == b"hello"
        again = await http(daemon.addresses[0], "POST", "/spammer", b"g")
        assert (again.status, again.body) == (200, struct.pack("<I", pages))


async def test_a_mebibyte_of_guest_log_per_request(tmp_path: Path) -> None:
    """8 requests back to back, each logging 1,024 lines of 1 KiB. The healthy service answers throughout. Such a run
    is not looked for mid-run: once the log is rate-limited it is over in about a millisecond."""
    requests, lines = 8, 1024
    async with running(make_config(tmp_path, spammer())) as daemon:
        addr = daemon.addresses[0]
        neighbour = Neighbour(addr).start()
        await neighbour.answered(3)
        with capture_logs() as logs:
            client = await Client.connect(addr)
            try:
                for _ in range(requests):
                    answer = await client.request("POST", "/spammer", b"L")
                    assert (answer.status, answer.body) == (200, struct.pack("<I", lines))
            finally:
                await client.close()
        samples = await neighbour.stop()
        assert_all_answered(samples)
        written = sum(1 for e in logs if e.get("event") == "guest.log" and e.get("service") == "spammer")
        # LOG RATE LIMIT (not finished when this was written; service keys log_rate/log_burst, default 100 lines/s
        # with a burst of 200): most of the 8,192 lines are dropped, counted in micromono_guest_log_dropped_total.
        metrics = await scrape(daemon)
        dropped = metrics.get(("micromono_guest_log_dropped_total", (("service", "spammer"),)))
        assert dropped is not None, 'no micromono_guest_log_dropped_total{service="spammer"} (no log rate limit)'
        assert dropped > 0 and written < requests * lines, (written, dropped)
        assert written + dropped <= requests * lines
        # It recovers.
        assert (await http(addr, "POST", "/spammer", b"hello")).body == b"hello"
