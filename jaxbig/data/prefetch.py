"""Host batches built ahead of the train step by a background thread (`data.prefetch`).

    calls = [(0, 4), (4, 4), (8, 2)]                    # what the loop will ask for, in order
    with Prefetcher(lambda c: make_batch(*c), calls, depth=2) as batches:
        for call, batch in batches:                     # (call, make_batch(*call)), in order
            ...

A pipeline's batch i is a pure function of (seed, i) (`jaxbig.data`), so the batches of
the coming calls are known in advance and can be built while the device runs the current
one: with `depth` d > 0 one daemon thread runs `produce` over `calls` in order and keeps up
to d finished items waiting (plus the one it is building); the loop takes them in the same
order, so what it sees is exactly the synchronous sequence, and a resumed run that starts
`calls` at its step sees what an uninterrupted one would have. d = 0 builds each item on
the main thread when asked for, as without this module.

A thread, not grain's prefetch: the pipelines are index-based `get_batch(i)` objects, not
grain iterators, and what takes the time (NumPy augmentation, document reads) releases the
GIL, so one thread overlaps it with the jitted step without copying batches between
processes.

An exception raised while building an item is raised again in the consuming thread when
the loop reaches that item (same exception object: its type, message and the producer's
traceback, with a note naming the call). `close()` (also on leaving the `with` block,
whatever the reason: end of training, a stop signal, an exception in the loop) stops the
thread and waits up to `JOIN_TIMEOUT_S` for it to finish the item it is building.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

JOIN_TIMEOUT_S = 30.0  # longest wait for the thread to finish the item it is building
_POLL_S = 0.05  # how often a blocked producer / consumer checks the stop flag / the thread
THREAD_NAME = 'jaxbig-prefetch'


class _Failure:
    def __init__(self, call, error: BaseException):
        self.call, self.error = call, error


_END = object()


class Prefetcher:
    """Iterates `(call, produce(call))` for each call of `calls`, in order, `depth` items
    ahead on a background thread (depth 0: on the caller's thread, when asked). Use it as a
    context manager, or call `close()`."""

    def __init__(self, produce: Callable[[Any], Any], calls: Iterable, *, depth: int):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f'prefetch depth {depth!r} must be an int >= 0')
        self._produce, self._calls, self.depth = produce, iter(calls), depth
        self._stop = threading.Event()
        self._done = False
        self._thread = None
        if depth:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ producer thread
    def _run(self):
        call = None
        try:
            for call in self._calls:
                if self._stop.is_set():
                    return
                item = (call, self._produce(call))
                if not self._put(item):
                    return
        except BaseException as e:  # noqa: BLE001 (handed to the consumer, raised there)
            self._put(_Failure(call, e))
            return
        self._put(_END)

    def _put(self, item) -> bool:
        """Blocks until the queue takes `item` (True) or close() was called (False)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------------ consumer
    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        if self._thread is None:
            call = next(self._calls)  # StopIteration ends the loop
            return call, self._produce(call)
        item = self._get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            item.error.add_note(f'(raised in the {THREAD_NAME} thread producing {item.call!r})')
            raise item.error
        return item

    def _get(self):
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f'the {THREAD_NAME} thread ended without a result')

    def close(self):
        """Stops the producer and waits (at most JOIN_TIMEOUT_S) for it to end. Idempotent."""
        self._done = True
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():  # a daemon: it cannot keep the process alive
            logging.warning('%s thread still building a batch after %.0f s; left behind',
                            THREAD_NAME, JOIN_TIMEOUT_S)
        while not self._queue.empty():  # drop prefetched batches now, not at exit
            self._queue.get_nowait()

    @property
    def alive(self) -> bool:
        """True while the producer thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def validate(data_config) -> int:
    """`data.prefetch` (present in every data section: `defaults.complete_data`), checked:
    an int >= 0, else ConfigError."""
    from jaxbig.config import ConfigError

    value = data_config.prefetch
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f'data.prefetch={value!r}: expected an int >= 0 (calls of host '
                          'batches built ahead of the step by a background thread; 0 = off)')
    return value
