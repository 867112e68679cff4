"""The settle tracker: which text of an accepted completion the user finally kept.

A region is the span of a document where accepted text was inserted. Every later change to the document, in the
shape editors report it (offset, deleted length, inserted text, in the units of the document's strings), maps the
region: a change before it shifts it; a change that overlaps it or inserts strictly inside it changes the kept
text (text inserted exactly at either edge is the user's own, not an edit of the completion); a change that deletes
all of it ends it, and what the user kept is then "". A region settles when no change has touched its text for
`settle_s`, or when its document is saved or closed. Pure logic: the caller passes the clock.
"""

from dataclasses import dataclass, field

DEFAULT_SETTLE_S = 10.0  # Zed's "settled data" waits as long


@dataclass
class Region:
    key: str  # the generation id the region belongs to
    document: str
    start: int
    text: str  # the region's current text
    original: str  # what was accepted
    changed_at: float
    ended: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    def apply(self, offset: int, deleted: int, inserted: str) -> bool:
        """Map the region through one change; True if its text changed (or it ended)."""
        if self.ended:
            return False
        start, end, stop = self.start, self.end, offset + deleted
        if deleted > 0 and offset <= start and stop >= end:
            self.text, self.ended = "", True
            return True
        if stop <= start:
            self.start += len(inserted) - deleted
            return False
        if offset >= end:
            return False
        # overlaps, or inserts strictly inside: replace the part of the region it covers, and keep what it brings
        head = self.text[: max(offset - start, 0)]
        tail = self.text[min(stop - start, len(self.text)) :]
        self.start = min(start, offset)
        self.text = head + inserted + tail
        return True


@dataclass(frozen=True)
class Settled:
    key: str
    document: str
    original: str
    final_text: str
    ended: bool

    @property
    def changed(self) -> bool:
        return self.final_text != self.original


@dataclass
class SettleTracker:
    settle_s: float = DEFAULT_SETTLE_S
    regions: dict[str, Region] = field(default_factory=dict)

    def track(self, key: str, document: str, start: int, text: str, now: float) -> list[Settled]:
        """Follow `text`, inserted at `start` of `document`, for the generation `key`. A partial accept that
        continues the key's live region (a word, then the next word) extends it; one elsewhere settles the old
        region now and starts a new one. Returns what settled."""
        if not text:
            raise ValueError("text: an accepted region cannot be empty")
        old = self.regions.get(key)
        if old is not None and not old.ended and old.document == document and old.end == start:
            old.text += text
            old.original += text
            old.changed_at = now
            return []
        settled = [self._settle(key)] if old is not None else []
        self.regions[key] = Region(key, document, start, text, text, now)
        return settled

    def change(self, document: str, offset: int, deleted: int, inserted: str, now: float) -> None:
        if offset < 0 or deleted < 0:
            raise ValueError("offset and deleted must be >= 0")
        for region in self.regions.values():
            if region.document == document and region.apply(offset, deleted, inserted):
                region.changed_at = now

    def tick(self, now: float) -> list[Settled]:
        """Settle the regions untouched for `settle_s`."""
        due = [k for k, r in self.regions.items() if now - r.changed_at >= self.settle_s]
        return [self._settle(k) for k in due]

    def saved(self, document: str) -> list[Settled]:
        return self._settle_document(document)

    def closed(self, document: str) -> list[Settled]:
        return self._settle_document(document)

    def settle_all(self) -> list[Settled]:
        return [self._settle(k) for k in list(self.regions)]

    def _settle_document(self, document: str) -> list[Settled]:
        return [self._settle(k) for k, r in list(self.regions.items()) if r.document == document]

    def _settle(self, key: str) -> Settled:
        r = self.regions.pop(key)
        return Settled(key, r.document, r.original, r.text, r.ended)
