"""Synchronous calls that work inside a running event loop (a notebook) as well as without.

A run drives its sends with ``asyncio.run``, which refuses to start inside a running
loop, and a notebook (Jupyter, IPython) always has one. :func:`sync_anywhere` makes a
synchronous library call work there: called from a thread whose loop is running, the
whole call runs in a worker thread (where ``asyncio.run`` may start its own loop, and
the call's SQLite connections stay in the thread that made them) while the caller
waits, as for any synchronous call. The running loop is never patched to be re-entrant.

A worker thread cannot install signal handlers, so Ctrl-C (a notebook's "interrupt
kernel") reaches the waiting caller as :class:`KeyboardInterrupt`. The caller hands it
to the worker: code inside the worker names what an interrupt means with
:func:`interrupts_to` (the send: the first finishes the requests in flight, the second
cancels them), and an interrupt that arrives before (while the rows are read) is handed
over as soon as the send begins, so the run stops before its first request.

For ``async`` code, :func:`in_worker` awaits a call in a worker thread while the loop
goes on; cancelling the awaiting task is the Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_local = threading.local()


def loop_running() -> bool:
    """Is an event loop running in this thread (a notebook, an ``async def``)?"""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def sync_anywhere(call: Callable[P, T]) -> Callable[P, T]:
    """``call``, run in a worker thread when the caller's thread has a running loop."""

    @functools.wraps(call)
    def anywhere(*args: P.args, **kwargs: P.kwargs) -> T:
        if not loop_running():
            return call(*args, **kwargs)
        worker: _Worker[T] = _Worker(functools.partial(call, *args, **kwargs))
        return worker.wait()

    return anywhere


async def in_worker(call: Callable[[], T]) -> T:
    """``call``'s result, run in a worker thread while the caller's loop goes on.

    Cancelling the awaiting task is a Ctrl-C for the call (the first finishes the
    requests in flight, a second cancels them): the task waits for the call to stop,
    so its record is complete, and then raises :class:`asyncio.CancelledError`.
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not finished.done():
            finished.set_result(None)

    worker: _Worker[T] = _Worker(call)

    def woken() -> None:
        loop.call_soon_threadsafe(wake)

    worker.on_done = woken
    worker.thread.start()
    cancelled = False
    while True:
        try:
            await asyncio.shield(finished)
            break
        except asyncio.CancelledError:
            cancelled = True
            worker.interrupt()
    if cancelled:
        raise asyncio.CancelledError
    return worker.outcome()


@contextlib.contextmanager
def interrupts_to(handler: Callable[[], None]) -> Iterator[None]:
    """While inside, a Ctrl-C that reaches the caller of this worker calls ``handler``
    on the loop running here. Outside a worker (the main thread has signal handlers of
    its own), nothing."""
    worker: _Worker[Any] | None = getattr(_local, "worker", None)
    if worker is None:
        yield
        return
    worker.attach(asyncio.get_running_loop(), handler)
    try:
        yield
    finally:
        worker.detach()


class _Worker(Generic[T]):
    """One call in a daemon thread; the caller waits and hands it each Ctrl-C."""

    def __init__(self, call: Callable[[], T]) -> None:
        self.call = call
        self.result: T | None = None
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.target: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None
        self.missed = 0  # interrupts that came before a handler was attached
        self.done = threading.Event()
        self.on_done: Callable[[], None] | None = None
        self.thread = threading.Thread(target=self._run, name="batchsend-worker", daemon=True)

    def _run(self) -> None:
        _local.worker = self
        try:
            self.result = self.call()
        except BaseException as exc:  # raised again in the waiting caller
            self.error = exc
        finally:
            self.done.set()
            if self.on_done is not None:
                with contextlib.suppress(RuntimeError):  # the awaiting loop is closed
                    self.on_done()

    def attach(self, loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> None:
        with self.lock:
            self.target = (loop, handler)
            missed, self.missed = self.missed, 0
        for _ in range(missed):
            loop.call_soon(handler)

    def detach(self) -> None:
        with self.lock:
            self.target = None

    def interrupt(self) -> None:
        with self.lock:
            if self.target is None:
                self.missed += 1
                return
            loop, handler = self.target
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
            loop.call_soon_threadsafe(handler)

    def wait(self) -> T:
        self.thread.start()
        # An Event, not Thread.join: a join interrupted by KeyboardInterrupt can leave
        # the thread looking finished while it runs on.
        while not self.done.is_set():
            try:
                self.done.wait()
            except KeyboardInterrupt:
                self.interrupt()
        self.thread.join()
        return self.outcome()

    def outcome(self) -> T:
        """The call's result, or its exception raised here."""
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set: the call returned
