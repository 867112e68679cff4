// A durable, bounded queue of events over a QueueStorage: an append-only log of lines, `{"a":seq,"e":event}` for
// an event put and `{"d":[first,last]}` when a run of events has been answered. Opening replays the log. When the
// answered lines outnumber the waiting events (and pass `compactAfter`), the log is rewritten with only the waiting
// events. When `maxEvents` are waiting, `onFull` decides: "drop_oldest" (default) drops the oldest, "drop_newest"
// refuses the new event, "throw" throws QueueFull; dropped events are counted in `dropped`.

import type { QueueStorage } from "./storage";

export type FullPolicy = "drop_oldest" | "drop_newest" | "throw";

export interface Queued {
  seq: number;
  eventId: string;
  body: string; // the event as JSON, sent as it is
}

export class QueueFull extends Error {}

export interface QueueOptions {
  maxEvents?: number;
  onFull?: FullPolicy;
  compactAfter?: number;
}

export class DurableQueue {
  private readonly waiting = new Map<number, Queued>(); // in seq order: Map keeps insertion order
  private readonly ids = new Set<string>();
  private nextSeq = 1;
  private answeredLines = 0;
  dropped = 0;
  readonly maxEvents: number;
  readonly onFull: FullPolicy;
  readonly compactAfter: number;

  constructor(
    readonly storage: QueueStorage,
    options: QueueOptions = {},
  ) {
    this.maxEvents = options.maxEvents ?? 100_000;
    this.onFull = options.onFull ?? "drop_oldest";
    this.compactAfter = options.compactAfter ?? 10_000;
    const log = storage.read();
    this.replay(log);
    if (log && !log.endsWith("\n")) storage.append("\n"); // end a line a crash cut short before adding to it
  }

  get size(): number {
    return this.waiting.size;
  }

  /** Write one event; true if it is new to the queue (a second put of a waiting event_id changes nothing). */
  put(event: { event_id: string } & Record<string, unknown>): boolean {
    if (this.ids.has(event.event_id)) return false;
    if (this.waiting.size >= this.maxEvents && !this.makeRoom()) return false;
    const body = JSON.stringify(event);
    const seq = this.nextSeq++;
    this.storage.append(`{"a":${seq},"e":${body}}\n`);
    this.waiting.set(seq, { seq, eventId: event.event_id, body });
    this.ids.add(event.event_id);
    return true;
  }

  peek(limit: number): Queued[] {
    const out: Queued[] = [];
    for (const item of this.waiting.values()) {
      if (out.length >= limit) break;
      out.push(item);
    }
    return out;
  }

  /** Remove answered events: a run of consecutive items from `peek`. */
  remove(items: Queued[]): void {
    if (!items.length) return;
    const first = items[0].seq;
    const last = items[items.length - 1].seq;
    this.storage.append(`{"d":[${first},${last}]}\n`);
    this.forget(first, last);
    this.answeredLines += 1;
    if (this.answeredLines >= this.compactAfter && this.answeredLines > this.waiting.size) this.compact();
  }

  compact(): void {
    let log = "";
    for (const item of this.waiting.values()) log += `{"a":${item.seq},"e":${item.body}}\n`;
    this.storage.replace(log);
    this.answeredLines = 0;
  }

  close(): void {
    this.storage.close();
  }

  private makeRoom(): boolean {
    if (this.onFull === "throw") throw new QueueFull(`the queue holds ${this.waiting.size} events (maxEvents=${this.maxEvents})`);
    this.dropped += 1;
    if (this.onFull === "drop_newest") return false;
    const oldest = this.waiting.values().next().value as Queued;
    this.storage.append(`{"d":[${oldest.seq},${oldest.seq}]}\n`);
    this.forget(oldest.seq, oldest.seq);
    this.answeredLines += 1;
    return true;
  }

  private forget(first: number, last: number): void {
    for (const [seq, item] of this.waiting) {
      if (seq > last) break;
      if (seq >= first) {
        this.waiting.delete(seq);
        this.ids.delete(item.eventId);
      }
    }
  }

  private replay(log: string): void {
    for (const line of log.split("\n")) {
      if (!line) continue;
      let record: { a?: number; e?: { event_id: string }; d?: [number, number] };
      try {
        record = JSON.parse(line);
      } catch {
        continue; // a line cut short by a crash while it was written: it was never acknowledged to anyone
      }
      if (record.a !== undefined && record.e) {
        const body = JSON.stringify(record.e);
        this.waiting.set(record.a, { seq: record.a, eventId: record.e.event_id, body });
        this.ids.add(record.e.event_id);
        this.nextSeq = Math.max(this.nextSeq, record.a + 1);
      } else if (record.d) {
        this.forget(record.d[0], record.d[1]);
        this.answeredLines += 1;
      }
    }
  }
}
