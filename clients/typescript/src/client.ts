// The editor-facing client: generate through the gateway (or bring a generation id from any OpenAI client), then
// `track(generationId)` and say what the user did. Every event is written to the queue's storage before the call
// returns and delivered in the background; what the user kept is followed by the settle tracker.

import * as os from "node:os";
import * as path from "node:path";

import { Sender, type BackoffOptions, type DeliveryStats, type Rejected } from "./delivery";
import { eventId } from "./ids";
import { DurableQueue, type FullPolicy } from "./queue";
import { DEFAULT_SETTLE_MS, SettleTracker, type Settled } from "./settle";
import { FileStorage, type QueueStorage } from "./storage";

export interface ClientOptions {
  baseUrl: string;
  apiKey: string;
  /** Where the queue lives: a QueueStorage, or a file path (default ~/.editloop/queue.log). */
  storage?: QueueStorage | string;
  maxEvents?: number;
  onFull?: FullPolicy;
  batchSize?: number;
  flushIntervalMs?: number;
  inFlight?: number;
  backoff?: BackoffOptions;
  settleMs?: number;
  onRejected?: (rejected: Rejected) => void;
  timeoutMs?: number;
  /** Current time in ms for the settle tracker (tests). */
  clock?: () => number;
}

export interface Generation {
  id: string; // the generation id: the gateway's response id
  text: string;
  model: string; // the adapter version that produced it, e.g. "v3" or "base"
  raw: Record<string, unknown>;
}

export interface GenerateRequest {
  prompt?: string;
  messages?: { role: string; content: string }[];
  model?: string;
  [param: string]: unknown;
}

export interface GenerationRecord {
  generationId: string;
  completion: string;
  model: string;
  prompt?: string;
  messages?: { role: string; content: string }[];
  [field: string]: unknown;
}

export class Tracked {
  constructor(
    private readonly client: EditloopClient,
    readonly generationId: string,
  ) {}

  /** The user took the completion (or `acceptedText`, a part of it). With `document` and `offset` (where the
   * accepted text now starts), the settle tracker follows it and posts `edited` once it settles. */
  accepted(options: { acceptedText?: string; document?: string; offset?: number } = {}): void {
    const { acceptedText, document, offset } = options;
    const fields = acceptedText === undefined ? {} : { accepted_text: acceptedText };
    this.client.emit(this.generationId, "accepted", acceptedText ?? "", fields);
    if (document !== undefined && offset !== undefined) {
      const text = acceptedText ?? this.client.completionOf(this.generationId);
      if (!text) throw new Error("accepted: give acceptedText to track a generation this client did not generate");
      this.client.trackRegion(this.generationId, document, offset, text);
    }
  }

  rejected(reason?: string): void {
    this.client.emit(this.generationId, "rejected", "", reason ? { reason } : {});
  }

  edited(finalText: string): void {
    this.client.emit(this.generationId, "edited", finalText, { final_text: finalText });
  }

  rated(score: number, options: { comment?: string; key?: string } = {}): void {
    const fields: Record<string, unknown> = { score };
    if (options.comment) fields.comment = options.comment;
    this.client.emit(this.generationId, "rating", `${pyNumber(score)}:${options.key ?? ""}`, fields);
  }
}

export class EditloopClient {
  readonly queue: DurableQueue;
  readonly sender: Sender;
  readonly tracker: SettleTracker;
  private readonly baseUrl: string;
  private readonly completions = new Map<string, string>();
  private readonly ticker: NodeJS.Timeout;
  private readonly clock: () => number;
  private closed = false;

  constructor(private readonly options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    const storage =
      typeof options.storage === "object"
        ? options.storage
        : new FileStorage(options.storage ?? path.join(os.homedir(), ".editloop", "queue.log"));
    this.queue = new DurableQueue(storage, { maxEvents: options.maxEvents, onFull: options.onFull });
    this.sender = new Sender(this.queue, this.baseUrl, options.apiKey, options);
    this.tracker = new SettleTracker(options.settleMs ?? DEFAULT_SETTLE_MS);
    this.clock = options.clock ?? (() => performance.now());
    this.ticker = setInterval(() => this.postSettled(this.tracker.tick(this.clock())), Math.min(1000, this.tracker.settleMs / 4));
    this.ticker.unref?.();
    if (this.queue.size) this.sender.nudge(); // what an earlier session left on disk
  }

  /** One completion through the gateway (`messages` for chat). The gateway records the generation itself. */
  async generate(request: GenerateRequest): Promise<Generation> {
    const { prompt, messages, model = "production", ...params } = request;
    if ((prompt === undefined) === (messages === undefined)) throw new Error("give exactly one of prompt or messages");
    const [route, body] = messages
      ? ["/v1/chat/completions", { model, messages, ...params }]
      : ["/v1/completions", { model, prompt, ...params }];
    const r = await fetch(this.baseUrl + route, {
      method: "POST",
      headers: { authorization: `Bearer ${this.options.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`generate: HTTP ${r.status}: ${(await r.text()).slice(0, 500)}`);
    const raw = (await r.json()) as { id: string; model?: string; choices: { text?: string; message?: { content: string } }[] };
    const choice = raw.choices[0];
    const generation = { id: raw.id, text: choice.message?.content ?? choice.text ?? "", model: raw.model ?? "", raw };
    this.remember(generation.id, generation.text);
    return generation;
  }

  /** Record a generation made elsewhere (your own model, another provider). */
  logGeneration(record: GenerationRecord): Tracked {
    const { generationId, ...fields } = record;
    this.emit(generationId, "generation", "", fields);
    this.remember(generationId, record.completion);
    return this.track(generationId);
  }

  track(generationId: string): Tracked {
    return new Tracked(this, generationId);
  }

  // The editor's document events, for the settle tracker (VS Code: onDidChangeTextDocument's contentChanges).
  textChanged(document: string, offset: number, deleted: number, inserted: string): void {
    this.tracker.change(document, offset, deleted, inserted, this.clock());
  }

  documentSaved(document: string): void {
    this.postSettled(this.tracker.saved(document));
  }

  documentClosed(document: string): void {
    this.postSettled(this.tracker.closed(document));
  }

  get stats(): DeliveryStats {
    return this.sender.stats;
  }

  get rejected(): Rejected[] {
    return this.sender.rejected;
  }

  flush(timeoutMs = 10_000): Promise<boolean> {
    return this.sender.flush(timeoutMs);
  }

  /** Settle every tracked region now, deliver what is queued (within `timeoutMs`), and close. True if nothing is
   * left; what is left stays in the storage for the next client on it. */
  async close(timeoutMs = 10_000): Promise<boolean> {
    if (this.closed) return this.queue.size === 0;
    this.postSettled(this.tracker.settleAll());
    this.closed = true;
    clearInterval(this.ticker);
    this.sender.stop();
    const empty = await this.sender.flush(timeoutMs);
    this.queue.close();
    return empty;
  }

  /** @internal */
  emit(generationId: string, type: string, discriminator: string, fields: Record<string, unknown>): void {
    this.queue.put({
      event_id: eventId(generationId, type, discriminator),
      type,
      generation_id: generationId,
      occurred_at: new Date().toISOString(),
      ...fields,
    });
    this.sender.nudge();
  }

  /** @internal */
  completionOf(generationId: string): string | undefined {
    return this.completions.get(generationId);
  }

  /** @internal */
  trackRegion(generationId: string, document: string, offset: number, text: string): void {
    this.postSettled(this.tracker.track(generationId, document, offset, text, this.clock()));
  }

  /** The completions this client made or logged, to track an accept of them; the latest 1024. */
  private remember(generationId: string, completion: string): void {
    this.completions.set(generationId, completion);
    if (this.completions.size > 1024) this.completions.delete(this.completions.keys().next().value as string);
  }

  private postSettled(settled: Settled[]): void {
    for (const s of settled) if (s.changed) this.track(s.key).edited(s.finalText);
  }
}

/** A score as Python's str(float) writes it, so both clients derive the same rating id (1 -> "1.0"). */
function pyNumber(value: number): string {
  return Number.isInteger(value) ? value.toFixed(1) : String(value);
}
