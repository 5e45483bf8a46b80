"""`latentserve bench overload`: the gateway under four times the load it can serve, and after.

A gateway process (embedded runtime) first serves Encode at batch 64 from 8 concurrent clients: its
capacity, in requests a second. Then an open-loop client sends requests at four times that rate (each
on its own task, whatever the answers) for `duration` seconds, then at half the capacity for as long:
for each phase, the share refused (RESOURCE_EXHAUSTED) and how fast, the p50/p99 latency of the calls
accepted, the gateway's resident memory, and the latency of a health check asked every 50 ms from a
process of its own (so the load generator's own backlog is not counted), on the main port and on the
health port (`--health-port`, a thread of its own). All on the same 2 cores.
"""
import multiprocessing
import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.gateway import drive, gateway_process
from serving.triton_server import free_ports
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

BATCH = 64
HEALTH_EVERY = 0.05  # seconds


def resident_mib(pid: int) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def probe_health(targets: list[str], duration: float, results) -> None:
    """In its own process: a health check of each target every HEALTH_EVERY seconds for `duration`;
    the latencies (s) per target to `results`."""
    latencies, stop_at = {target: [] for target in targets}, time.perf_counter() + duration
    channels = [grpc.insecure_channel(target) for target in targets]
    stubs = [health_pb2_grpc.HealthStub(channel) for channel in channels]
    for stub in stubs:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected before timing
    while time.perf_counter() < stop_at:
        for target, stub in zip(targets, stubs):
            began = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies[target].append(time.perf_counter() - began)
        time.sleep(HEALTH_EVERY)
    for channel in channels:
        channel.close()
    results.put(latencies)


async def phase(target: str, health_target: str, pid: int, request, rate: float, duration: float) -> dict[str, float]:
    """Requests sent at `rate` a second for `duration` seconds, each not waiting for the others."""
    outcomes, memory = [], []
    health_results = multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe_health, args=([target, health_target], duration, health_results))
    prober.start()
    async with grpc.aio.insecure_channel(target) as channel:
        encode = encoder_pb2_grpc.EncoderStub(channel).Encode

        async def one():
            began = time.perf_counter()
            try:
                await encode(request, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            outcomes.append((code, time.perf_counter() - began))

        began = time.perf_counter()
        stop_at = began + duration
        calls, sent = [], 0
        while (now := time.perf_counter()) < stop_at:
            while sent < (now - began) * rate:
                calls.append(asyncio.create_task(one()))
                sent += 1
            memory.append(resident_mib(pid))
            await asyncio.sleep(0.001)
        await asyncio.gather(*calls)
    health_latencies = health_results.get(timeout=60)
    prober.join()
    ok = np.array([latency for code, latency in outcomes if code == grpc.StatusCode.OK]) * 1000
    refused = np.array([latency for code, latency in outcomes if code == grpc.StatusCode.RESOURCE_EXHAUSTED]) * 1000
    other = len(outcomes) - len(ok) - len(refused)
    return {
        "sent": len(outcomes), "refused_share": len(refused) / len(outcomes), "other_errors": other,
        "accepted_per_second": len(ok) / duration,
        "refused_p99_ms": float(np.percentile(refused, 99)) if len(refused) else float("nan"),
        "accepted_p50_ms": float(np.percentile(ok, 50)), "accepted_p99_ms": float(np.percentile(ok, 99)),
        "health_p99_ms": float(np.percentile(health_latencies[target], 99) * 1000),
        "health_port_p99_ms": float(np.percentile(health_latencies[health_target], 99) * 1000),
        "health_port_max_ms": max(health_latencies[health_target]) * 1000,
        "rss_mib": max(memory),
    }


def main(repository_root: Path, duration: float) -> None:
    images = (load_mnist().test.images[:BATCH] * 255).round().astype(np.uint8)
    request = encoder_pb2.EncodeRequest(images=common_pb2.Images(tensor=common_pb2.Tensor(
        shape=images.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=images.tobytes())))
    health_port, = free_ports(1)
    health_target = f"127.0.0.1:{health_port}"
    with gateway_process(repository_root, "--gallery", "none", "--health-port", str(health_port)) as (target, pid):
        idle = resident_mib(pid)

        async def capacity() -> float:
            async with grpc.aio.insecure_channel(target) as channel:
                call = encoder_pb2_grpc.EncoderStub(channel).Encode
                latencies, elapsed = await drive(lambda: call(request), 8, duration)
            return len(latencies) / elapsed

        served = asyncio.run(capacity())
        print(f"Encode at batch {BATCH}: capacity {served:.0f} requests/s (8 clients, {duration:.0f} s); "
              f"gateway RSS idle {idle:.0f} MiB\n")
        print("| phase | offered requests/s | sent | refused | other errors | accepted requests/s | refused p99 ms | accepted p50 ms | "
              "accepted p99 ms | health p99 ms, main port | health p99 ms, health port | health max ms, health port | RSS max MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, rate in (("4x capacity", 4 * served), ("0.5x capacity, after", 0.5 * served)):
            r = asyncio.run(phase(target, health_target, pid, request, rate, duration))
            print(f"| {name} | {rate:.0f} | {r['sent']} | {r['refused_share']:.1%} | {r['other_errors']} | {r['accepted_per_second']:.0f} | "
                  f"{r['refused_p99_ms']:.1f} | {r['accepted_p50_ms']:.1f} | {r['accepted_p99_ms']:.1f} | "
                  f"{r['health_p99_ms']:.1f} | {r['health_port_p99_ms']:.1f} | {r['health_port_max_ms']:.1f} | "
                  f"{r['rss_mib']:.0f} |", flush=True)
