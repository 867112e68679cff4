// Sending the queue to POST /v1/events: batches by size and time, retries with backoff, never loses an event.
// The same policy as the Python client (editloop_client/delivery.py): 429, 5xx, any 4xx but 400/413/422, and
// network errors are retried after an exponential backoff with full jitter, never sooner than `Retry-After`; a 2xx removes the
// batch, reporting each invalid event with its field to `onRejected`; a batch refused whole (400, 413, 422) is split
// until each invalid event is alone.

import type { DurableQueue, Queued } from "./queue";

export interface Rejected {
  eventId: string;
  field: string;
  detail: string;
  event: Record<string, unknown>;
}

export interface DeliveryStats {
  sent: number;
  stored: number;
  duplicates: number;
  rejected: number;
  retries: number;
  lastError?: string;
}

export interface BackoffOptions {
  baseMs?: number;
  capMs?: number;
}

export class Backoff {
  attempt = 0;
  readonly baseMs: number;
  readonly capMs: number;
  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? 200;
    this.capMs = options.capMs ?? 30_000;
  }
  nextDelay(retryAfterMs = 0): number {
    const delay = Math.random() * Math.min(this.capMs, this.baseMs * 2 ** this.attempt);
    this.attempt += 1;
    return Math.max(delay, retryAfterMs);
  }
}

/** Retry-After in milliseconds: delta-seconds or an HTTP date. */
export function retryAfterMs(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const when = Date.parse(trimmed);
  return Number.isNaN(when) ? undefined : Math.max(0, when - now);
}

// The answers that blame what was sent: never retried. Any other 4xx (401, 403, a 404 from a wrong base URL, ...)
// is retried like a 5xx, so that a fixable mistake in the set-up loses nothing.
const THE_EVENTS_FAULT = new Set([400, 413, 422]);

class Retry extends Error {
  constructor(
    message: string,
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

export interface SenderOptions {
  batchSize?: number;
  flushIntervalMs?: number;
  inFlight?: number;
  backoff?: BackoffOptions;
  onRejected?: (rejected: Rejected) => void;
  timeoutMs?: number;
}

export class Sender {
  readonly stats: DeliveryStats = { sent: 0, stored: 0, duplicates: 0, rejected: 0, retries: 0 };
  readonly rejected: Rejected[] = [];
  readonly batchSize: number;
  readonly flushIntervalMs: number;
  readonly inFlight: number;
  private readonly backoff: Backoff;
  private timer?: NodeJS.Timeout;
  private running?: Promise<number>;
  private stopped = false;

  constructor(
    private readonly queue: DurableQueue,
    private readonly baseUrl: string,
    private readonly apiKey: string,
    private readonly options: SenderOptions = {},
  ) {
    this.batchSize = options.batchSize ?? 500;
    this.flushIntervalMs = options.flushIntervalMs ?? 1000;
    this.inFlight = options.inFlight ?? 2;
    this.backoff = new Backoff(options.backoff);
  }

  /** Called after each put: sends at once when a batch is full, else within flushIntervalMs. */
  nudge(): void {
    if (this.stopped || this.running) return;
    if (this.queue.size >= this.batchSize) this.schedule(0);
    else if (!this.timer) this.schedule(this.flushIntervalMs);
  }

  /** Deliver everything queued, retrying within `timeoutMs`; true if the queue is empty. */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.size) {
      const delay = await this.drain();
      if (!this.queue.size || Date.now() + delay > deadline) break;
      await sleep(delay);
    }
    return this.queue.size === 0;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(delay: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.drain().then((retryIn) => {
        if (this.stopped) return;
        if (retryIn) this.schedule(retryIn);
        else if (this.queue.size) this.nudge();
      });
    }, delay);
    this.timer.unref?.(); // a pending send never keeps the process alive: the events are on disk
  }

  /** Send what is queued, batch after batch; 0 when empty, else the delay before a retry. One drain at a time. */
  private drain(): Promise<number> {
    if (!this.running) {
      this.running = this.drainOnce().finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  private async drainOnce(): Promise<number> {
    while (this.queue.size) {
      const rows = this.queue.peek(this.batchSize * this.inFlight);
      const batches: Queued[][] = [];
      for (let i = 0; i < rows.length; i += this.batchSize) batches.push(rows.slice(i, i + this.batchSize));
      const results = await Promise.all(batches.map((b) => this.deliver(b).then(() => undefined, (e) => e)));
      const failures = results.filter((e): e is Retry => e instanceof Retry);
      const other = results.find((e) => e !== undefined && !(e instanceof Retry));
      if (other) throw other;
      if (failures.length) {
        this.stats.retries += 1;
        this.stats.lastError = failures[0].message;
        return this.backoff.nextDelay(Math.max(...failures.map((f) => f.retryAfter ?? 0)));
      }
      this.backoff.attempt = 0;
    }
    return 0;
  }

  private async deliver(batch: Queued[]): Promise<void> {
    let r: Response;
    try {
      r = await fetch(`${this.baseUrl}/v1/events`, {
        method: "POST",
        headers: { authorization: `Bearer ${this.apiKey}`, "content-type": "application/json" },
        body: `{"events":[${batch.map((q) => q.body).join(",")}]}`,
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 30_000),
      });
    } catch (err) {
      throw new Retry(`network: ${String(err)}`);
    }
    const status = r.status;
    if (status >= 300 && !THE_EVENTS_FAULT.has(status)) {
      const text = await r.text().catch(() => "");
      throw new Retry(`HTTP ${status}: ${text.slice(0, 200)}`, retryAfterMs(r.headers.get("retry-after")));
    }
    if (THE_EVENTS_FAULT.has(status) && batch.length > 1) {
      await r.body?.cancel();
      const half = Math.floor(batch.length / 2);
      await this.deliver(batch.slice(0, half));
      await this.deliver(batch.slice(half));
      return;
    }
    const text = await r.text();
    if (status >= 400) {
      this.reject(batch[0], fieldOf(text));
      this.queue.remove(batch.slice(0, 1));
      return;
    }
    const answer = JSON.parse(text) as {
      stored?: number;
      duplicates?: number;
      errors?: { index: number; field: string; detail: string }[];
    };
    for (const e of answer.errors ?? []) this.reject(batch[e.index], [e.field, e.detail]);
    this.stats.sent += batch.length;
    this.stats.stored += answer.stored ?? 0;
    this.stats.duplicates += answer.duplicates ?? 0;
    this.queue.remove(batch);
  }

  private reject(item: Queued, [field, detail]: [string, string]): void {
    const rejected = { eventId: item.eventId, field, detail, event: JSON.parse(item.body) };
    this.stats.rejected += 1;
    this.rejected.push(rejected);
    this.options.onRejected?.(rejected);
  }
}

function fieldOf(text: string): [string, string] {
  let detail = text;
  try {
    detail = String(JSON.parse(text).detail ?? text);
  } catch {
    // not JSON: the whole text is the detail
  }
  const at = detail.indexOf(": ");
  return at > 0 ? [detail.slice(0, at), detail.slice(at + 2)] : ["body", detail];
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
