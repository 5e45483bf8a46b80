"""`serve --workers N`: N gateway processes on one port.

grpc sets SO_REUSEPORT on Linux, so each worker binds the same address and the kernel spreads new
connections over them (a connection, and every call on it, stays with one worker). Each worker is a whole
gateway, with its own runtime, limits and metrics; they share state only through the index backend, which
is why N > 1 needs a Milvus server (Settings says so). Worker i serves /metrics on metrics_port + i,
health on health_port + i and the page on ui_port + i.

The first worker starts alone and the others once it is ready, so that one worker creates the default
collection and seeds the gallery. A worker that exits on its own stops the others and `serve` fails:
restarting is the process supervisor's work (systemd, Kubernetes), which sees one failed service.
"""
import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading

from serving.server import serve
from serving.settings import Settings

log = logging.getLogger(__name__)
STOP_MARGIN_SECONDS = 10  # past shutdown_grace_seconds, a worker still running is killed
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerExited(Exception):
    """A worker stopped without being asked to."""


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker `index`'s settings: one process, its own /metrics and health ports (0 stays off)."""
    def offset(port: int) -> int:
        return port + index if port else 0

    return settings.model_copy(update={
        "workers": 1, "metrics_port": offset(settings.metrics_port), "health_port": offset(settings.health_port),
        "ui_port": offset(settings.ui_port),
    })


def _run_worker(settings: Settings, ready, parent: int) -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the parent alone, which asks each worker once
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # a parent killed outright takes its workers along
    if os.getppid() != parent:  # it died before that took effect
        return
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker {os.getpid()} %(name)s: %(message)s")
    asyncio.run(serve(settings, ready))


def serve_workers(settings: Settings) -> None:
    """Run `settings.workers` gateways until SIGINT or SIGTERM, then stop each within its grace."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no event loop or grpc state inherited
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    workers, ready = [], []  # an Event must outlive its worker's start: the child opens it as it unpickles

    def start(index: int) -> None:
        ready.append(context.Event())
        worker = context.Process(target=_run_worker, args=(worker_settings(settings, index), ready[-1], os.getpid()), name=f"latentserve-worker-{index}")
        worker.start()
        workers.append(worker)
        log.info("worker %d started (pid %d)", index, worker.pid)

    try:
        start(0)
        while not (ready[0].wait(0.2) or stop.is_set() or not workers[0].is_alive()):
            pass
        if workers[0].is_alive() and not stop.is_set():
            for index in range(1, settings.workers):
                start(index)
        while not stop.is_set():
            exited = multiprocessing.connection.wait([worker.sentinel for worker in workers], timeout=0.2)
            if exited:
                worker = next(w for w in workers if w.sentinel in exited)
                worker.join()  # reaped: its exit code is known only now
                raise WorkerExited(f"{worker.name} (pid {worker.pid}) exited with status {worker.exitcode}; the other workers were stopped")
    finally:
        _stop(workers, settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS)


def _stop(workers: list, timeout: float) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: the worker's own graceful stop
    for worker in workers:
        worker.join(timeout)
        if worker.is_alive():
            log.error("%s did not stop within %g s; killed", worker.name, timeout)
            worker.kill()
            worker.join()
