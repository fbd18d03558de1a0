"""A minimal asyncio HTTP/1.1 keep-alive client: enough to poll many
admin endpoints at once and to drive a fixed-rate load whose every
response (status, serving endpoint) is recorded with its time."""

import asyncio
import time


class Conn:
    def __init__(self, port):
        self.port = port
        self.r = self.w = None

    async def request(self, method="GET", path="/", host="x", body=b"", timeout=2.0):
        """Returns (status, headers dict lowercased, body); reconnects once
        if the kept-alive connection was closed."""
        for attempt in (0, 1):
            try:
                if self.w is None:
                    self.r, self.w = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), timeout)
                head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                if body:
                    head += "Content-Type: application/json\r\n"
                self.w.write(head.encode() + b"\r\n" + body)
                return await asyncio.wait_for(self._read(), timeout)
            except (OSError, asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
                self.close()
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")

    async def _read(self):
        raw = await self.r.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.r.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.r.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self.r.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self):
        if self.w is not None:
            self.w.close()
        self.r = self.w = None


async def fixed_rate(port, host, rate, seconds, conns=20, on_tick=None):
    """Sends `rate` requests/s for `seconds` over `conns` keep-alive
    connections; returns [(t_sent, t_done, status, served_by)] with
    times from time.monotonic(). A request that cannot be sent on time
    waits for its connection (the lateness shows in t_done - t_sent)."""
    records = []
    total = int(rate * seconds)
    start = time.monotonic() + 0.05
    pool = [Conn(port) for _ in range(conns)]
    queue = asyncio.Queue()
    for c in pool:
        queue.put_nowait(c)

    async def one(i):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        c = await queue.get()
        try:
            status, h, body = await c.request(path="/", host=host, timeout=2.0)
            who = h.get("x-served-by") or h.get("x-mesh-error") or "?"
        except Exception as e:  # a failed request is a data point
            status, who = 0, type(e).__name__
        finally:
            queue.put_nowait(c)
        records.append((due, time.monotonic(), status, who))

    tasks = []
    for i in range(total):
        tasks.append(asyncio.ensure_future(one(i)))
        if on_tick is not None and i == 0:
            asyncio.ensure_future(on_tick(start))
    await asyncio.gather(*tasks)
    for c in pool:
        c.close()
    return records
