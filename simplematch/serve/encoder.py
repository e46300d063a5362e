"""One model lane per worker process: every encode goes through one thread that owns the model runs.

Requests await a future, so the event loop never blocks on onnxruntime, and runs never compete for the
CPU cores with each other (onnxruntime already spreads one run over its intra-op threads). ``max_batch > 1``
turns on opportunistic micro-batching: the lane encodes every request already waiting (up to
``max_batch``) in one run, without waiting for more. BENCHMARKS.md ("smatch serve") measures whether that
helps; the default follows the measurement.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from simplematch.runtime import Features, Matcher, Prepared


class EncodeLane:
    """A daemon thread encoding :class:`Prepared` images with ``matcher``, in submission order."""

    def __init__(self, matcher: Matcher, max_batch: int = 1) -> None:
        self.matcher = matcher
        self.max_batch = max(1, int(max_batch))
        self.batches = 0  # model runs so far, and the images they held: batching is observable
        self.images = 0
        self._queue: queue.SimpleQueue[tuple[Prepared, Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="smatch-encode", daemon=True)
        self._thread.start()

    def submit(self, image: Prepared) -> Future:
        """Queue one image; the future resolves to its :class:`Features` (or the encode's exception)."""
        fut: Future = Future()
        self._queue.put((image, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _take(self) -> tuple[list[tuple[Prepared, Future]], bool]:
        """The next batch: one request (blocking), then whatever else is already queued (no waiting)."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            if not batch:
                continue
            try:
                feats: list[Features] = self.matcher.encode([p for p, _ in batch])
            except BaseException as err:  # handed to every waiting request, never lost
                for _, fut in batch:
                    fut.set_exception(err)
                continue
            self.batches += 1
            self.images += len(batch)
            for (_, fut), f in zip(batch, feats, strict=True):
                fut.set_result(f)
