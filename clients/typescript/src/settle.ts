// The settle tracker: which text of an accepted completion the user finally kept. The same rules as the Python
// client's editloop_client/settle.py, checked by the same shared cases:
// a change before the region shifts it; one that overlaps it or inserts strictly inside it changes the kept text
// (text inserted exactly at either edge is the user's own); one that deletes all of it ends it (kept: ""). A region
// settles when no change has touched its text for `settleMs`, or when its document is saved or closed. Offsets are
// UTF-16 code units, as VS Code's `rangeOffset` / `rangeLength` are. Pure logic: the caller passes the clock.

export const DEFAULT_SETTLE_MS = 10_000; // Zed's "settled data" waits as long

export interface Region {
  key: string;
  document: string;
  start: number;
  text: string;
  original: string;
  changedAt: number;
  ended: boolean;
}

export interface Settled {
  key: string;
  document: string;
  original: string;
  finalText: string;
  ended: boolean;
  changed: boolean;
}

/** Map `region` through one change; true if its text changed (or it ended). */
export function applyChange(region: Region, offset: number, deleted: number, inserted: string): boolean {
  if (region.ended) return false;
  const start = region.start;
  const end = start + region.text.length;
  const stop = offset + deleted;
  if (deleted > 0 && offset <= start && stop >= end) {
    region.text = "";
    region.ended = true;
    return true;
  }
  if (stop <= start) {
    region.start += inserted.length - deleted;
    return false;
  }
  if (offset >= end) return false;
  const head = region.text.slice(0, Math.max(offset - start, 0));
  const tail = region.text.slice(Math.min(stop - start, region.text.length));
  region.start = Math.min(start, offset);
  region.text = head + inserted + tail;
  return true;
}

export class SettleTracker {
  readonly regions = new Map<string, Region>();

  constructor(readonly settleMs: number = DEFAULT_SETTLE_MS) {}

  /** Follow `text`, inserted at `start` of `document`, for generation `key`. A partial accept that continues the
   * key's live region extends it; one elsewhere settles the old region now. Returns what settled. */
  track(key: string, document: string, start: number, text: string, now: number): Settled[] {
    if (!text) throw new RangeError("text: an accepted region cannot be empty");
    const old = this.regions.get(key);
    if (old && !old.ended && old.document === document && old.start + old.text.length === start) {
      old.text += text;
      old.original += text;
      old.changedAt = now;
      return [];
    }
    const settled = old ? [this.settle(key)] : [];
    this.regions.set(key, { key, document, start, text, original: text, changedAt: now, ended: false });
    return settled;
  }

  change(document: string, offset: number, deleted: number, inserted: string, now: number): void {
    if (offset < 0 || deleted < 0) throw new RangeError("offset and deleted must be >= 0");
    for (const region of this.regions.values()) {
      if (region.document === document && applyChange(region, offset, deleted, inserted)) region.changedAt = now;
    }
  }

  /** Settle the regions untouched for `settleMs`. */
  tick(now: number): Settled[] {
    const due = [...this.regions.values()].filter((r) => now - r.changedAt >= this.settleMs).map((r) => r.key);
    return due.map((k) => this.settle(k));
  }

  saved(document: string): Settled[] {
    return this.settleDocument(document);
  }

  closed(document: string): Settled[] {
    return this.settleDocument(document);
  }

  settleAll(): Settled[] {
    return [...this.regions.keys()].map((k) => this.settle(k));
  }

  private settleDocument(document: string): Settled[] {
    const keys = [...this.regions.values()].filter((r) => r.document === document).map((r) => r.key);
    return keys.map((k) => this.settle(k));
  }

  private settle(key: string): Settled {
    const r = this.regions.get(key)!;
    this.regions.delete(key);
    return {
      key,
      document: r.document,
      original: r.original,
      finalText: r.text,
      ended: r.ended,
      changed: r.text !== r.original,
    };
  }
}
