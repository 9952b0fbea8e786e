"""The engine package on real modules: compiling, the ABI check, the cache, the raw call path, traps, deadlines,
limits."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import struct
import time
from pathlib import Path

import pytest
import wasmtime

from conftest import fixture
from micromono import engine as engine_mod
from micromono.abi import KIND_CALL, KIND_HTTP
from micromono.engine import CompiledModule, Engine, Instance
from micromono.engine.ffi import word_arg
from micromono.errors import AbiViolation, CallTimeout, GuestAppError, GuestTrap, ServiceLoadError


class RecordingHost:
    """A Host that records what guests ask for (unit tests of the engine alone)."""

    def __init__(self, call_result: int = 0) -> None:
        self.calls: list[tuple[bytes, bytes, int, int]] = []
        self.logs: list[tuple[int, bytes]] = []
        self.call_result = call_result

    def call(self, caller: Instance, target: bytes, request: bytes, reply_ptr: int, reply_cap: int) -> int:
        self.calls.append((target, bytes(request), reply_ptr, reply_cap))
        return self.call_result

    def send(self, caller: Instance, target: bytes, message: bytes) -> int:
        return 0

    def log(self, caller: Instance, level: int, message: bytes) -> None:
        self.logs.append((level, message))


@pytest.fixture
def engine(tmp_path: Path):
    with Engine(RecordingHost(), cache_dir=tmp_path / "cache", epoch_tick=0.002) as eng:
        yield eng


def start(engine: Engine, name: str, memory_limit: int = 1 << 24) -> Instance:
    return engine.compile(name, fixture(name)).instantiate(memory_limit=memory_limit)


def test_private_bindings_the_fast_path_relies_on_exist() -> None:
    # Pinned on purpose: the engine's hot path (engine/ffi.py) uses these private parts of wasmtime-py 50.
    from wasmtime import _bindings, _ffi

    for symbol in (
        "wasmtime_func_call_async", "wasmtime_instance_pre_instantiate_async", "wasmtime_call_future_poll",
        "wasmtime_call_future_delete", "wasmtime_context_set_epoch_deadline", "wasmtime_engine_increment_epoch",
        "wasmtime_memory_data", "wasmtime_memory_data_size", "wasmtime_instance_export_get",
        "wasmtime_module_serialize", "wasmtime_module_deserialize",
    ):  # fmt: skip
        assert getattr(_ffi.dll, symbol)
    assert _bindings._wasmtime_linker_define_func_unchecked
    assert _bindings._wasmtime_linker_define_async_func
    assert _bindings.wasmtime_func_unchecked_callback_t
    assert _bindings.wasmtime_func_async_callback_t
    assert _bindings._wasmtime_store_epoch_deadline_callback.argtypes[1]
    assert ctypes.sizeof(_bindings.wasmtime_val_raw_t) == 16
    assert engine_mod.WASMTIME_VERSION.startswith("50.")
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, '(module (memory (export "m") 1) (func (export "f")))')
    exports = wasmtime.Instance(store, module, []).exports(store)
    assert isinstance(exports["f"]._func, _ffi.wasmtime_func_t)  # type: ignore[union-attr]
    assert isinstance(exports["m"]._memory, _ffi.wasmtime_memory_t)  # type: ignore[union-attr]


def test_ctypes_passes_a_word_arg_as_the_word_itself() -> None:
    # ffi.word_arg: a byref of an object at `value` must reach C as `value` (a pointer-sized word), and a slice
    # of a c_char array must be bytes: the pure hot path relies on both.
    libc = ctypes.CDLL(None)
    identity = libc.memchr  # memchr(p, c, n) returns p when p[0] == c
    identity.restype = ctypes.c_void_p
    buf = ctypes.create_string_buffer(b"a" * 8)
    address = ctypes.addressof(buf)
    assert identity(word_arg(address), word_arg(ord("a")), word_arg(8)) == address
    assert identity(word_arg(address), word_arg(ord("b")), word_arg(8)) is None
    assert (ctypes.c_char * 8).from_address(address)[2:5] == b"aaa"


def test_invoke_echoes_a_call_through_the_raw_path(engine: Engine) -> None:
    inst = start(engine, "echo.wat")
    reply = inst.invoke(KIND_CALL, b"hello")
    assert type(reply) is bytes and reply == b"hello"  # a copy, on both paths (the compiled one too)
    payload = bytes(range(256)) * 4
    assert bytes(inst.invoke(KIND_CALL, payload)) == payload
    assert repr(inst).startswith("<Instance echo.wat sha256=")
    inst.close()
    inst.close()  # idempotent


def test_invoke_grows_the_inbox_for_large_requests(engine: Engine) -> None:
    inst = start(engine, "echo.wat")
    big = b"x" * 200_000
    assert bytes(inst.invoke(KIND_CALL, big)) == big
    assert inst.inbox_cap == 200_000
    inst.close()


def test_http_request_reaches_the_guest_encoded_per_the_abi(engine: Engine) -> None:
    from micromono.abi import decode_http_response, encode_http_request

    inst = start(engine, "echo.wat")
    request = encode_http_request(b"POST", b"/echo", b"a=1", b"x-k: v\r\n", b"body!")
    status, headers, body = decode_http_response(bytes(inst.invoke(KIND_HTTP, request)))
    assert (status, headers, body) == (200, [], b"body!")


def test_trap_raises_guest_trap_and_poisons_the_instance(engine: Engine) -> None:
    inst = start(engine, "hostile.wat")
    with pytest.raises(GuestTrap, match=r"^service 'hostile.wat' trapped: .*unreachable") as info:
        inst.invoke(KIND_CALL, b"u")
    assert "wasm backtrace" in info.value.trap
    assert inst.poisoned


def test_stack_overflow_is_a_trap(engine: Engine) -> None:
    inst = start(engine, "hostile.wat")
    with pytest.raises(GuestTrap, match=r"call stack exhausted"):
        inst.invoke(KIND_CALL, b"s")


def test_application_error_keeps_the_instance(engine: Engine) -> None:
    inst = start(engine, "hostile.wat")
    with pytest.raises(GuestAppError, match=r"^service 'hostile.wat' returned application error 42$") as info:
        inst.invoke(KIND_CALL, b"e")
    assert info.value.code == 42
    assert not inst.poisoned
    assert bytes(inst.invoke(KIND_CALL, b"ok")) == b"ok"


def test_reply_outside_memory_is_an_abi_violation(engine: Engine) -> None:
    inst = start(engine, "hostile.wat")
    with pytest.raises(
        AbiViolation, match=r"reply \(ptr=2147483632, len=64\) outside its linear memory of 131072 bytes"
    ):
        inst.invoke(KIND_CALL, b"r")
    assert inst.poisoned


def test_hostile_pointer_to_an_import_traps_only_the_guest(tmp_path: Path) -> None:
    host = RecordingHost()
    with Engine(host, cache_dir=None) as eng:
        inst = eng.compile("hostile", fixture("hostile.wat")).instantiate(memory_limit=1 << 24)
        with pytest.raises(
            GuestTrap,
            match=r"micromono\.call: target \(ptr=4294967040, len=512\) is outside linear memory of 131072 bytes",
        ):
            inst.invoke(KIND_CALL, b"p")
        assert host.calls == []  # the host never saw the bad request


def test_infinite_loop_is_interrupted_at_the_deadline(engine: Engine) -> None:
    inst = start(engine, "hostile.wat")
    inst.deadline = time.monotonic() + 0.05
    started = time.monotonic()
    with pytest.raises(CallTimeout, match=r"^service 'hostile.wat' ran past its deadline and was interrupted$"):
        inst.invoke(KIND_CALL, b"l")
    elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 2.0
    # A fresh instance with a fresh deadline works: the engine survived.
    assert bytes(start(engine, "hostile.wat").invoke(KIND_CALL, b"fine")) == b"fine"


def test_memory_limit_makes_memory_grow_fail(engine: Engine) -> None:
    inst = start(engine, "hostile.wat", memory_limit=1 << 20)  # 16 pages
    pages = struct.unpack("<I", bytes(inst.invoke(KIND_CALL, b"m")))[0]
    assert pages <= 16
    assert not inst.poisoned  # memory.grow returned -1; the guest handled it


def test_abi_check_lists_every_problem(engine: Engine) -> None:
    with pytest.raises(ServiceLoadError) as info:
        engine.compile("bad", fixture("missing_exports.wat"))
    message = str(info.value)
    assert message.startswith(
        f"service 'bad' ({fixture('missing_exports.wat')}): does not follow the micromono guest ABI v2"
    )
    assert 'it does not export its linear memory as "memory"' in message
    assert "it does not export mm_abi_version (func () -> (i32))" in message
    assert "its export mm_handle is func (i32) -> (i32), expected func (i32, i32) -> (i64)" in message
    assert "it does not export mm_inbox (func (i32) -> (i32))" in message
    assert message.endswith("build it with the SDK in sdk/")


def test_unknown_import_is_refused(engine: Engine) -> None:
    with pytest.raises(ServiceLoadError, match=r"it imports env\.db_query, which micromono does not provide"):
        engine.compile("bad", fixture("bad_import.wat"))


def test_wrong_abi_version_is_refused_at_instantiation(engine: Engine) -> None:
    compiled = engine.compile("future", fixture("wrong_version.wat"))
    with pytest.raises(ServiceLoadError, match=r"mm_abi_version\(\) returned 3, but this daemon speaks guest ABI v2"):
        compiled.instantiate(memory_limit=1 << 20)


def test_guest_that_refuses_the_inbox_does_not_start(engine: Engine) -> None:
    compiled = engine.compile("small", fixture("small_inbox.wat"))
    with pytest.raises(ServiceLoadError, match=r"mm_inbox\(65536\) gave no buffer"):
        compiled.instantiate(memory_limit=1 << 20)


def test_missing_and_corrupt_files(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ServiceLoadError, match=r"^service 'x' \(.*nope\.wasm\): file not found; build it"):
        engine.compile("x", tmp_path / "nope.wasm")
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(b"\0asm\x01\0\0\0garbage that is not a section")
    with pytest.raises(ServiceLoadError, match=r"not a valid WebAssembly module: .*; rebuild it for wasm32$"):
        engine.compile("x", corrupt)
    text = tmp_path / "broken.wat"
    text.write_text('(module (func (export "f") (result i32)))')
    with pytest.raises(ServiceLoadError, match=r"not a valid WebAssembly module"):
        engine.compile("x", text)


def test_compiled_modules_are_cached_and_tampered_cache_files_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with Engine(RecordingHost(), cache_dir=cache) as eng:
        first = eng.compile("echo", fixture("echo.wat"))
    entries = list(cache.glob("*.cwasm"))
    assert [p.name.split("-")[0] for p in entries] == [first.sha256]
    assert (cache / "cache.key").stat().st_mode & 0o077 == 0
    # A file the daemon did not write (bad MAC) is never deserialized: it is recompiled and replaced.
    entries[0].write_bytes(b"\0" * 32 + b"native code from someone else")
    with Engine(RecordingHost(), cache_dir=cache) as eng:
        again = eng.compile("echo", fixture("echo.wat"))
        assert bytes(again.instantiate(memory_limit=1 << 20).invoke(KIND_CALL, b"ok")) == b"ok"
    assert entries[0].read_bytes()[32:] != b"native code from someone else"


def test_cache_hit_skips_compilation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    with Engine(RecordingHost(), cache_dir=cache) as eng:
        eng.compile("echo", fixture("echo.wat"))
    with Engine(RecordingHost(), cache_dir=cache) as eng:

        def refuse(*args: object) -> None:
            raise AssertionError("compiled although the cache holds the module")

        monkeypatch.setattr(eng, "_compile_source", refuse)
        module = eng.compile("echo", fixture("echo.wat"))
        assert isinstance(module, CompiledModule)


def echo_variant(directory: Path, n: int) -> Path:
    """echo.wat with one more exported constant: other bytes, so another cache entry of about the same size."""
    path = directory / f"echo{n}.wat"
    text = fixture("echo.wat").read_text()
    path.write_text(text.rstrip().removesuffix(")") + f'\n  (func (export "variant") (result i32) (i32.const {n})))\n')
    return path


def test_the_cache_is_bounded_least_recently_used_first_never_what_a_loaded_module_uses(tmp_path: Path) -> None:
    cache, sources = tmp_path / "cache", tmp_path / "src"
    sources.mkdir()
    with Engine(RecordingHost(), cache_dir=cache) as eng:
        kept = eng.compile("a", echo_variant(sources, 1))  # stays loaded
        dropped = eng.compile("b", echo_variant(sources, 2))
        old = eng.compile("c", echo_variant(sources, 3))
        sizes = {p.name.partition("-")[0]: p.stat().st_size for p in cache.glob("*.cwasm")}
        assert eng.cache_bytes == sum(sizes.values()) and eng.cache_evictions == 0
        # Loaded long ago: `kept` least recently used of all, then `dropped`, then `old`.
        for age, module in enumerate((kept, dropped, old)):
            entry = next(cache.glob(f"{module.sha256}-*.cwasm"))
            os.utime(entry, (1_000_000 + age, 1_000_000 + age))
        digests = {name: module.sha256 for name, module in (("kept", kept), ("dropped", dropped), ("old", old))}
        del dropped, old, module  # (the loop variable held `old` too)
        gc.collect()
        # Room for three entries: the fourth makes the cache trim one, the least recently used not in use.
        eng.cache_max_bytes = sum(sizes.values()) + max(sizes.values()) // 2
        newest = eng.compile("d", echo_variant(sources, 4))
        left = {p.name.partition("-")[0] for p in cache.glob("*.cwasm")}
        assert left == {digests["kept"], digests["old"], newest.sha256}
        assert eng.cache_evictions == 1 and eng.cache_bytes <= eng.cache_max_bytes
        assert eng.cache_bytes == sum(p.stat().st_size for p in cache.glob("*.cwasm"))
        # A bound below what is in use removes everything else, never an entry in use.
        eng.cache_max_bytes = 1
        del newest
        gc.collect()
        last = eng.compile("e", echo_variant(sources, 5))
        left = {p.name.partition("-")[0] for p in cache.glob("*.cwasm")}
        assert left == {digests["kept"], last.sha256}


def test_a_cache_hit_marks_its_entry_recently_used(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with Engine(RecordingHost(), cache_dir=cache) as eng:
        eng.compile("echo", fixture("echo.wat"))
    entry = next(cache.glob("*.cwasm"))
    os.utime(entry, (1_000_000, 1_000_000))
    with Engine(RecordingHost(), cache_dir=cache) as eng:
        eng.compile("echo", fixture("echo.wat"))
        assert eng.cache_bytes == entry.stat().st_size  # measured at first use, nothing written
    assert entry.stat().st_mtime > 1_000_000


def test_log_import_reaches_the_host(tmp_path: Path) -> None:
    host = RecordingHost(call_result=-1)
    with Engine(host, cache_dir=None) as eng:
        inst = eng.compile("caller", fixture("caller.wat")).instantiate(memory_limit=1 << 22)
        request = struct.pack("<III", 1, 64, 4) + b"echo" + b"payload"
        reply = bytes(inst.invoke(KIND_CALL, request))
    assert host.logs == [(1, b"caller handling")]
    assert host.calls == [(b"echo", b"payload", 70004, 64)]
    assert struct.unpack_from("<i", reply)[0] == -1


def test_engine_repr_and_close() -> None:
    eng = Engine(RecordingHost(), cache_dir=None, compiled=False)
    assert re.match(r"^<Engine wasmtime 50\.\S+ \[running \| pure \| cache: None\]>$", repr(eng))
    eng.close()
    eng.close()
    assert "closed" in repr(eng)


async def test_wasi_is_linked_with_nothing_granted_and_output_goes_to_the_log(tmp_path: Path) -> None:
    import structlog

    from conftest import http, make_config, running

    config = make_config(tmp_path, {
        "wasi": {"wasm": fixture("wasi.wat")},
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["wasi"]},
    })  # fmt: skip
    async with running(config) as daemon:
        with structlog.testing.capture_logs() as logs:
            request = struct.pack("<iII", 1, 64, 4) + b"wasi"
            response = await http(daemon.addresses[0], "POST", "/front", request)
    assert response.status == 200
    code, env_count, prestat_errno, open_errno = struct.unpack("<iiii", response.body)
    assert code == 12
    assert env_count == 0  # no environment variables
    assert prestat_errno == 8  # EBADF: fd 3 is not a preopened directory, there are none
    assert open_errno == 8  # so nothing can be opened
    output = [(e["event"], e["message"], e["service"]) for e in logs if e["event"].startswith("guest.std")]
    assert output == [("guest.stdout", "hello from stdout", "wasi"), ("guest.stderr", "oops on stderr", "wasi")]


async def test_wasi_grants_come_only_from_the_manifest(tmp_path: Path) -> None:
    from conftest import http, make_config, running

    (tmp_path / "data").mkdir()
    config = make_config(tmp_path, {
        "wasi": {"wasm": fixture("wasi.wat"), "env": {"LANG": "C", "MODE": "test"},
                 "dirs": [{"host": str(tmp_path / "data"), "guest": "/data"}]},
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["wasi"]},
    })  # fmt: skip
    async with running(config) as daemon:
        response = await http(daemon.addresses[0], "POST", "/front", struct.pack("<iII", 1, 64, 4) + b"wasi")
    _, env_count, prestat_errno, open_errno = struct.unpack("<iiii", response.body)
    assert env_count == 2  # exactly the variables granted
    assert prestat_errno == 0  # fd 3 is now the granted directory
    assert open_errno != 0  # and an absolute path outside it still cannot be opened
    missing = make_config(tmp_path, {"wasi": {"wasm": fixture("wasi.wat"), "dirs": [{"host": "nope", "guest": "/x"}]}})
    from micromono.daemon import StartupError

    with pytest.raises(StartupError, match=r"cannot grant directory .*nope as /x: it must exist and be readable"):
        async with running(missing):
            pass


def test_guest_that_traps_in_mm_inbox_does_not_start(engine: Engine) -> None:
    compiled = engine.compile("bad", fixture("trapping_inbox.wat"))
    with pytest.raises(ServiceLoadError, match=r"mm_inbox\(65536\) failed: service 'bad' trapped: .*unreachable"):
        compiled.instantiate(memory_limit=1 << 20)


def test_abi_version_is_checked_once_per_module(engine: Engine) -> None:
    compiled = engine.compile("echo", fixture("echo.wat"))
    assert not compiled.abi_checked
    first = compiled.instantiate(memory_limit=1 << 20)
    assert compiled.abi_checked
    second = compiled.instantiate(memory_limit=1 << 20)
    assert bytes(second.invoke(KIND_CALL, b"x")) == b"x"
    first.close()
    second.close()


def test_services_built_from_the_same_bytes_share_one_compiled_module(engine: Engine, tmp_path: Path) -> None:
    copy = tmp_path / "copy.wat"
    copy.write_bytes(fixture("hostile.wat").read_bytes())
    first = engine.compile("first", fixture("hostile.wat"))
    second = engine.compile("second", copy)  # another file, the same bytes
    assert first.shares_code_with(second)
    assert not engine.compile("other", fixture("echo.wat")).shares_code_with(first)
    # Each service keeps its own name: a trap in the second one's instance names it.
    inst = second.instantiate(memory_limit=1 << 24)
    with pytest.raises(GuestTrap, match=r"^service 'second' trapped: .*unreachable"):
        inst.invoke(KIND_CALL, b"u")
    # And an invalid module is refused for every service that uses it, each under its own name.
    for name in ("x", "y"):
        refused = rf"^service '{name}' \(.*\): does not follow the micromono guest ABI"
        with pytest.raises(ServiceLoadError, match=refused):
            engine.compile(name, fixture("missing_exports.wat"))
