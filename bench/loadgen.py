"""A closed-loop load generator light enough to share two cores with the server it measures.

Each client keeps one HTTP/1.1 keep-alive connection and sends its next request the moment the
previous answer is in (closed loop). Request bytes are built once, before the clock starts; an
answer is read by its Content-Length and checked by a substring search for the expected top-1
label, so a request costs the generator a few socket calls and no parsing. Gradio is called
through its documented HTTP API (upload, call, event stream) on the same connections.

While a level runs, a sampler reads the server's process tree with psutil (CPU, peak resident
memory) and the generator's own CPU from getrusage, so both are reported next to the result.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from imgserve import testing

BOUNDARY = uuid.uuid4().hex
CONNECT_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 120
SAMPLE_EVERY_S = 0.25


@dataclass(frozen=True)
class Request:
    """One pre-built request: the bytes to send, and what its answer must contain."""

    kind: str  # "small" or "large": latency is reported per kind too
    raw: bytes
    expect: bytes  # the top-1 label as it appears in the JSON answer; b"" checks nothing


def upload(
    host: str, path: str, field: str, filename: str, data: bytes, fields: dict[str, object], extra_headers: str = ""
) -> bytes:
    """A POST of one image in the form field `field` and the text `fields` after it, as curl -F sends it."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + "".join(
            f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}' for k, v in fields.items()
        ).encode()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode()
    return head + body


def multipart_request(
    host: str, path: str, kind: str, filename: str, data: bytes, top_k: int, expect: str, model: str = ""
) -> Request:
    """POST `path` with one image in the `images` field, `top_k` and `model` (if given)."""
    fields = {"top_k": top_k, **({"model": model} if model else {})}
    raw = upload(host, path, "images", filename, data, fields, "Connection: keep-alive\r\n")
    return Request(kind=kind, raw=raw, expect=expect.encode())


@dataclass
class Completed:
    start: float
    end: float
    status: int  # HTTP status; 0 for a connection failure or timeout
    kind: str
    wrong: bool = False


@dataclass
class Response:
    status: int
    body: bytes
    keep_alive: bool
    retry_after: float | None


async def _read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, keep, retry_after = None, False, True, None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name == b"retry-after":
            retry_after = float(value)
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, keep = await reader.read(), False
    return Response(status, body, keep, retry_after)


async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: Request) -> Response:
    """One request, one answer."""
    writer.write(req.raw)
    return await _read_response(reader)


def gradio_upload_request(host: str, filename: str, data: bytes, expect: str, kind: str) -> Request:
    """Step 1 of Gradio's HTTP API: upload the file (the `raw` of a Gradio request)."""
    raw = upload(host, "/gradio_api/upload", "files", filename, data, {})
    return Request(kind=kind, raw=raw, expect=expect.encode())


def gradio_exchange(host: str, api_name: str):
    """Gradio's documented HTTP API (its "curl" way): upload, call, then read the event stream.

    Lighter than `gradio_client`, which spent ~150 ms of CPU per call on this machine, taking a
    core's worth from the server it measured.
    """

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: Request) -> Response:
        r = await send(reader, writer, req)
        if r.status != 200:
            return r
        [path] = json.loads(r.body)
        call = json.dumps({"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}).encode()
        writer.write(
            f"POST /gradio_api/call/{api_name} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(call)}\r\n\r\n".encode()
            + call
        )
        r = await _read_response(reader)
        if r.status != 200:
            return r
        event = json.loads(r.body)["event_id"]
        writer.write(f"GET /gradio_api/call/{api_name}/{event} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        r = await _read_response(reader)
        if b"event: complete" not in r.body:  # "event: error": the app failed
            return Response(500, r.body, r.keep_alive, None)
        return r

    return exchange


async def _client(
    host: str,
    port: int,
    requests: list[Request],
    offset: int,
    until: float,
    done: list[Completed],
    exchange=send,
) -> None:
    """One closed-loop client: requests[offset], requests[offset + 1], ... until `until`."""
    reader = writer = None
    i = offset
    while time.perf_counter() < until:
        req = requests[i % len(requests)]
        i += 1
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            r = await asyncio.wait_for(exchange(reader, writer, req), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            done.append(Completed(t0, time.perf_counter(), 0, req.kind))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.1)
            continue
        wrong = r.status == 200 and bool(req.expect) and req.expect not in r.body
        done.append(Completed(t0, time.perf_counter(), r.status, req.kind, wrong))
        if not r.keep_alive:
            writer.close()
            reader = writer = None
        if r.retry_after is not None:  # a shed request (429/503): come back when told, as clients should
            await asyncio.sleep(r.retry_after)
    if writer is not None:
        writer.close()


@dataclass
class Sampler:
    """Server CPU and peak memory, generator CPU, over the measured window."""

    server_pid: int
    peak_rss: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    def snapshot(self, label: str) -> None:
        processes = testing.process_tree(self.server_pid)
        self.cpu[f"server_{label}"] = testing.cpu_seconds(processes)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu[f"gen_{label}"] = usage.ru_utime + usage.ru_stime
        self.cpu[f"t_{label}"] = time.perf_counter()
        self.peak_rss = max(self.peak_rss, testing.rss_bytes(processes))

    def memory(self) -> None:
        self.peak_rss = max(self.peak_rss, testing.tree_rss_bytes(self.server_pid))

    def cores(self, who: str) -> float:
        return (self.cpu[f"{who}_end"] - self.cpu[f"{who}_start"]) / (self.cpu["t_end"] - self.cpu["t_start"])


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, rounded to 0.1: the value a fraction q of samples are at or below."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))], 1)


def summarize(done: list[Completed], t_start: float, t_end: float, sampler: Sampler) -> dict:
    """Throughput and latency of the requests answered inside the window (steady state: the clients
    were busy since the warm-up began, so a request that started before the window counts too)."""
    window = [c for c in done if t_start <= c.end <= t_end]
    ok = [c for c in window if c.status == 200 and not c.wrong]
    latencies = [(c.end - c.start) * 1000 for c in ok]
    seconds = t_end - t_start
    return {
        "seconds": round(seconds, 2),
        "requests": len(window),
        "images_per_s": round(len(ok) / seconds, 2),
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "p50_small_ms": percentile([(c.end - c.start) * 1000 for c in ok if c.kind == "small"], 0.5),
        "p50_large_ms": percentile([(c.end - c.start) * 1000 for c in ok if c.kind == "large"], 0.5),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "errors": len(window) - len(ok),
        "statuses": {str(k): v for k, v in sorted(Counter(c.status for c in window).items())},
        "wrong_answers": sum(c.wrong for c in window),
        "server_cpu_cores": round(sampler.cores("server"), 2),
        "loadgen_cpu_cores": round(sampler.cores("gen"), 2),
        "server_peak_rss_mb": round(sampler.peak_rss / 2**20),
    }


async def _sample(sampler: Sampler, t_start: float, t_end: float, before: Callable, after: Callable) -> None:
    await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
    await before()
    sampler.snapshot("start")
    while (left := t_end - time.perf_counter()) > 0:
        await asyncio.sleep(min(SAMPLE_EVERY_S, left))
        sampler.memory()
    sampler.snapshot("end")
    await after()


async def http_level(
    host: str,
    port: int,
    requests: list[Request],
    clients: int,
    warmup_s: float,
    measure_s: float,
    server_pid: int,
    metrics: Callable[[], object] | None = None,
    exchange=send,
) -> dict:
    """Run `clients` closed-loop clients for warm-up + measurement; summarize the measured window."""
    done: list[Completed] = []
    now = time.perf_counter()
    t_start, t_end = now + warmup_s, now + warmup_s + measure_s
    sampler = Sampler(server_pid)
    batch: dict[str, float] = {}

    async def read_metrics(label: str) -> None:
        if metrics is not None:
            batch[label] = await asyncio.to_thread(metrics)

    step = max(1, len(requests) // clients)  # clients start at different places in the mix
    await asyncio.gather(
        _sample(sampler, t_start, t_end, lambda: read_metrics("start"), lambda: read_metrics("end")),
        *(_client(host, port, requests, c * step, t_end, done, exchange) for c in range(clients)),
    )
    result = summarize(done, t_start, t_end, sampler)
    if metrics is not None:
        (s0, n0), (s1, n1) = batch["start"], batch["end"]
        result["batches"] = n1 - n0
        result["mean_batch_size"] = round((s1 - s0) / (n1 - n0), 2) if n1 > n0 else None
    return result
