"""Work spread over worker processes, its results back in input order.

:func:`ordered_map` is the one pool batchsend uses: the row pass hands it chunks of the
recipient file (:mod:`batchsend.preflight`) and gets each chunk's results back in the
order the chunks were read, whichever worker finished first. What it promises:

* order: results come out in input order;
* bounded memory: at most ``window`` chunks (by default three per worker and two more,
  at most 24 unless there are more workers) are read ahead of the one being
  consumed, so a ten-million-row file is never held at once; each worker is a process
  of its own (about 70 MB, most of it the libraries, shared with the others), so memory
  grows with ``workers``, not with the file;
* no orphans: a worker exits when the process that started it is gone (a ``kill -9``
  of batchsend included), and ignores Ctrl-C, which the main process handles alone;
* one code path: with one worker (or too little input to be worth a process), the same
  function runs in this process.

Workers are started with ``spawn``: a fork of a process whose polars thread pool is
running can deadlock, and ``spawn`` behaves the same on every platform and in notebooks.
A spawned worker normally imports the script that started it, as ``__mp_main__``; a
script calling ``run_campaign`` without an ``if __name__ == "__main__":`` guard would then
run its campaign again in every worker. Workers here import batchsend only: the main
module is hidden from ``multiprocessing`` while they start (:func:`_main_hidden`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["Ready", "default_workers", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")

_state: dict[str, Any] = {}  # a worker's own state, set up by its initializer


class Ready:
    """An item whose result is known already (kept from an earlier pass): ``ordered_map``
    yields ``value`` in its place, in order, without calling its function."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _done(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


def default_workers() -> int:
    """The machine's cores this process may use (the ``--workers`` default)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:  # the main process is gone: nothing will read our work
            os._exit(1)


def _start_worker(parent: int, setup: Callable[..., Any], args: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _state["state"] = setup(*args)


def _call(fn: Callable[[Any, T], R], item: T) -> R:
    return fn(_state["state"], item)


@contextlib.contextmanager
def _main_hidden() -> Generator[None, None, None]:
    """While processes start: no ``__main__`` path or spec for ``spawn`` to re-run."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    names = ("__file__", "__spec__")
    saved: dict[str, Any] = {k: main.__dict__[k] for k in names if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def ordered_map(
    fn: Callable[[Any, T], R],
    items: Iterable[T | Ready],
    *,
    workers: int,
    setup: Callable[..., Any],
    setup_args: tuple[Any, ...] = (),
    window: int | None = None,
    in_process_first: int = 1,
    state: Any = None,
) -> Iterator[R]:
    """``fn(state, item)`` for each item, in order, on ``workers`` processes.

    ``state`` is what ``setup(*setup_args)`` returned, called once in each worker before
    its first item (and once in this process, for the items run here). ``fn``,
    ``setup`` and the items must be picklable (module-level functions, plain data). The
    first ``in_process_first`` items run in this process, and with ``workers`` 1 every
    item does: the workers start with the item after, so a small file never pays for
    starting processes. A :class:`Ready` item's value is yielded in its place. ``state``:
    this process's state, made already (``setup`` is then called in the workers only).
    An error raised while taking the next item comes after the results of the items
    before it, as it would with one worker.

    Example::

        for result in ordered_map(power, range(10), workers=2, setup=int, setup_args=("2",)):
            print(result)
    """
    if state is None:
        state = setup(*setup_args)
    window = window or max(workers + 2, min(3 * workers + 2, 24))
    pool: ProcessPoolExecutor | None = None
    pending: deque[Future[R]] = deque()  # in input order; done ones are yielded at once
    here = 0  # items run in this process
    it = iter(items)
    try:
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception:
                while pending:  # what came before the error first, as in one process
                    yield pending.popleft().result()
                raise
            if isinstance(item, Ready):
                pending.append(_done(item.value))
            elif workers <= 1 or here < in_process_first:
                here += 1
                pending.append(_done(fn(state, item)))
            else:
                if pool is None:
                    pool = ProcessPoolExecutor(
                        max_workers=workers,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=_start_worker,
                        initargs=(os.getpid(), setup, setup_args),
                    )
                with _main_hidden():  # a worker may start in any submit
                    pending.append(pool.submit(_call, fn, item))
            while pending and (len(pending) >= window or pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
