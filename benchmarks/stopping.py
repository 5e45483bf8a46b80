"""`latentserve bench stopping`: how fast work stops when nobody waits, and how a SIGTERM drains.

Cancellation: a gateway process (default gallery: 10,000 items) runs a long call; the client cancels it
after a moment; the time until the gateway's CPU goes quiet (under 10% of a core over 50 ms, sampled
every 5 ms) is the time from cancellation to the end of the work. For PropagateLabels over the gallery
and a GenerateStream of a million images, TRIALS times each.

Shutdown: a gateway serves Encode at batch 64 from 8 clients and a GenerateStream longer than the grace
period (`shutdown_grace_seconds`, the default); SIGTERM; what the calls in flight ended with and when,
what calls sent after the signal got, and the time to the process's exit (the drain).
"""
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway import gateway_process, process_cpu_seconds
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, generator_pb2, generator_pb2_grpc, search_pb2, search_pb2_grpc
from serving.settings import Settings

TRIALS = 5
QUIET = 0.1  # share of a core under which the gateway counts as idle
WINDOW, SAMPLE = 0.05, 0.005  # seconds


def seconds_until_quiet(pid: int, since: float, timeout: float = 30) -> float:
    """Seconds from `since` (a perf_counter time) to the start of the first WINDOW in which `pid` used
    under QUIET of a core."""
    samples = []  # (time, cpu seconds)
    while time.perf_counter() - since < timeout:
        samples.append((time.perf_counter(), process_cpu_seconds(pid)))
        while samples[-1][0] - samples[0][0] > WINDOW:
            first, last = samples[0], samples[-1]
            if (last[1] - first[1]) / (last[0] - first[0]) < QUIET:
                return first[0] - since
            samples.pop(0)
        time.sleep(SAMPLE)
    raise TimeoutError(f"the gateway was still busy {timeout} s after the cancellation")


def cancellation(target: str, pid: int) -> dict[str, list[float]]:
    labels = {f"mnist-test-{i:05d}": int(label) for i, label in enumerate(load_mnist().test.labels[:100])}
    calls = {
        "PropagateLabels (10,000 items, 100 labelled)":
            lambda channel: search_pb2_grpc.SearchStub(channel).PropagateLabels(search_pb2.PropagateLabelsRequest(labels=labels), timeout=60),
        "GenerateStream (1,000,000 images)":
            lambda channel: generator_pb2_grpc.GeneratorStub(channel).GenerateStream(
                generator_pb2.GenerateStreamRequest(count=1_000_000, format=common_pb2.IMAGE_FORMAT_TENSOR), timeout=60),
    }
    seconds = {name: [] for name in calls}
    with grpc.insecure_channel(target) as channel:
        for name, start in calls.items():
            for _ in range(TRIALS):
                call = start(channel)
                time.sleep(0.3)  # working by now
                began = time.perf_counter()
                call.cancel()
                seconds[name].append(seconds_until_quiet(pid, began))
                time.sleep(0.5)
    return seconds


def shutdown(repository_root: Path) -> dict:
    images = (load_mnist().test.images[:64] * 255).round().astype(np.uint8)
    request = encoder_pb2.EncodeRequest(images=common_pb2.Images(tensor=common_pb2.Tensor(
        shape=images.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=images.tobytes())))
    ended = []  # (call, started before the signal, code, ended at)
    signalled = threading.Event()
    signal_at = []

    with gateway_process(repository_root, "--gallery", "none") as (target, pid), grpc.insecure_channel(target) as channel:
        encode = encoder_pb2_grpc.EncoderStub(channel).Encode

        def client():
            while True:
                before = signalled.is_set()
                try:
                    encode(request, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
                ended.append(("Encode", not before, code, time.perf_counter()))
                if before:  # one call after the signal, to see what it gets
                    return

        def stream():
            chunks = generator_pb2_grpc.GeneratorStub(channel).GenerateStream(
                generator_pb2.GenerateStreamRequest(count=1_000_000, format=common_pb2.IMAGE_FORMAT_TENSOR), timeout=120)
            try:
                for _ in chunks:
                    pass
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            ended.append(("GenerateStream", True, code, time.perf_counter()))

        workers = [threading.Thread(target=client) for _ in range(8)] + [threading.Thread(target=stream)]
        for worker in workers:
            worker.start()
        time.sleep(2)
        signal_at.append(time.perf_counter())
        os.kill(pid, signal.SIGTERM)
        signalled.set()
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # a zombie once it exits
            time.sleep(0.005)
        exited = time.perf_counter() - signal_at[0]
        for worker in workers:
            worker.join()
    rows = {}
    for call, before, code, at in ended:
        if before and at < signal_at[0]:
            continue  # ended before the signal
        row = rows.setdefault((call, "in flight at the signal" if before else "sent after the signal"), {})
        row[code.name] = row.get(code.name, 0) + 1
        row["last"] = max(row.get("last", 0.0), at - signal_at[0])
    return rows, exited


def main(repository_root: Path) -> None:
    with gateway_process(repository_root) as (target, pid):
        seconds = cancellation(target, pid)
    print(f"Cancellation to the end of the work ({TRIALS} trials each; idle: under {QUIET:.0%} of a core over {WINDOW * 1000:.0f} ms)\n")
    print("| call | median ms | max ms |\n|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {np.median(values) * 1000:.0f} | {max(values) * 1000:.0f} |")
    rows, exited = shutdown(repository_root)
    print(f"\nSIGTERM during Encode at batch 64 from 8 clients and a GenerateStream (grace {Settings().shutdown_grace_seconds:g} s); "
          f"the process exited {exited:.2f} s after the signal\n")
    print("| call | when | ended with | last one ended, s after the signal |\n|---|---|---|---|")
    for (call, when), row in rows.items():
        last = row.pop("last")
        print(f"| {call} | {when} | {', '.join(f'{count} {code}' for code, count in sorted(row.items()))} | {last:.2f} |")
