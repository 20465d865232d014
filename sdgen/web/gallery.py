"""A request's finished images for the gallery: the done tickets' record (batch/outputs.py,
what `sdgen grid` reads), kept in memory per request until the request changes, so paging
through 10,000 images reads the done ledger once, not at every page."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from sdgen import defaults
from sdgen.batch.outputs import Finished, accepted_request, finished_images
from sdgen.spool.request import Request
from sdgen.spool.states import TicketState
from sdgen.spool.store import Spool


class Gallery:
    def __init__(self, spool: Spool, keep: int | None = None):
        self.spool = spool
        self.keep = defaults.WEB_GALLERY_CACHE_REQUESTS if keep is None else keep
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[tuple, Request, list[Finished], dict[str, int]]] = OrderedDict()

    def _signature(self, rid: str) -> tuple:
        """What changes when a ticket of the request is done or folded: its done-marker files
        (one listing of tickets/done) and its ledger and folded record."""
        layout = self.spool.layout
        try:
            done = sum(1 for name in os.listdir(layout.tickets(TicketState.DONE)) if name.endswith(f".{rid}.json"))
        except FileNotFoundError:
            done = 0
        stats = []
        for path in (layout.done_ledger(rid), layout.folded(rid), layout.request_file(rid)):
            try:
                st = path.stat()
                stats.append((st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append(None)
        return (done, *stats)

    def images(self, rid: str) -> tuple[Request, list[Finished], dict[str, int]]:
        """(the accepted request, its finished images in order, file name -> position);
        UserError (one line) for an id that is not an accepted request."""
        signature = self._signature(rid)
        with self._lock:
            hit = self._cache.get(rid)
            if hit and hit[0] == signature:
                self._cache.move_to_end(rid)
                return hit[1], hit[2], hit[3]
        request = accepted_request(self.spool, rid)
        images = finished_images(self.spool, rid, request)
        positions = {image.path.name: i for i, image in enumerate(images)}
        with self._lock:
            self._cache[rid] = (signature, request, images, positions)
            self._cache.move_to_end(rid)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return request, images, positions
