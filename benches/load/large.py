"""S7: one large text parameter through the extended protocol, and the pooler's peak RSS growth.

One SCRAM client (idle.login) prepares a named statement, then binds it with a parameter of 1, 16
and 64 MiB: the Bind goes through the prepared-statement tracker, which must stream it. For each
size: the time from the first byte written to ReadyForQuery (median of a few repetitions), and the
pooler's RSS sampled every 2 ms while it runs, as growth over the RSS before. Bounded by count and
time.
"""
import asyncio, struct, threading, time

import idle

SIZES_MIB = (1, 16, 64)
REPEAT = {1: 9, 16: 3, 64: 3}
QUERY = b"SELECT length($1::text)"


def _msg(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def _bind(value):
    return (_msg(b"B", b"\0s7\0" + struct.pack("!hhI", 0, 1, len(value)) + value + struct.pack("!h", 0))
            + _msg(b"E", b"\0" + struct.pack("!I", 0)) + _msg(b"S", b""))


async def _until_ready(reader):
    got = None
    while True:
        kind, body = await idle._read(reader)
        if kind == b"E":
            raise RuntimeError(body.decode(errors="replace")[:200])
        if kind == b"D":
            got = int(body[6:].decode())
        if kind == b"Z":
            return got


class Peak:
    """The largest RSS of `pid` seen while running, sampled by a thread."""

    def __init__(self, rss_kib, pid):
        self.rss_kib, self.pid, self.peak, self.stop = rss_kib, pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss_kib(self.pid))
            time.sleep(0.002)

    def __enter__(self):
        self.peak = self.rss_kib(self.pid)
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(5)


async def _run(port, pid, rss_kib):
    reader, writer = await idle.login(port, "bench", "bench", "bench")
    writer.write(_msg(b"P", b"s7\0" + QUERY + b"\0" + struct.pack("!h", 0)) + _msg(b"S", b""))
    await writer.drain()
    await _until_ready(reader)
    rows = []
    for mib in SIZES_MIB:
        value = b"x" * (mib << 20)
        message = _bind(value)
        times = []
        base = rss_kib(pid) if pid else None
        with (Peak(rss_kib, pid) if pid else _Nothing()) as peak:
            for _ in range(REPEAT[mib]):
                t0 = time.perf_counter()
                writer.write(message)
                await writer.drain()
                n = await _until_ready(reader)
                times.append(time.perf_counter() - t0)
                if n != len(value):
                    raise RuntimeError(f"length {n}, sent {len(value)}")
        times.sort()
        rows.append({"mib": mib, "seconds": round(times[len(times) // 2], 4),
                     "rss_growth_kib": (peak.peak - base) if pid else None})
    writer.write(_msg(b"X", b""))
    writer.close()
    return rows


class _Nothing:
    peak = 0

    def __enter__(self):
        return self

    def __exit__(self, *_):
        pass


def measure(port, pid, rss_kib, timeout=300):
    """Per size: median seconds per Bind/Execute/Sync and the pooler's peak RSS growth (KiB)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(_run(port, pid, rss_kib), timeout))
    finally:
        loop.close()
