// The durable queue over its storage, the shared deterministic ids, and the retry timing.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";

import { EditloopClient } from "../src/client";
import { Backoff, retryAfterMs } from "../src/delivery";
import { eventId } from "../src/ids";
import { DurableQueue, QueueFull } from "../src/queue";
import { FileStorage, MemoryStorage } from "../src/storage";
import { SHARED } from "./shared";

const ev = (i: number) => ({ event_id: `e${i}`, type: "accepted", generation_id: `g${i}`, occurred_at: "2026-01-01T00:00:00Z" });
const tmp = () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), "elq-")), "queue.log");

test("events survive a reopen until removed", () => {
  const file = tmp();
  let q = new DurableQueue(new FileStorage(file));
  for (let i = 0; i < 5; i++) assert.equal(q.put(ev(i)), true);
  assert.equal(q.put(ev(0)), false); // waiting already: queued once
  q.close();
  q = new DurableQueue(new FileStorage(file));
  const items = q.peek(10);
  assert.deepEqual(items.map((i) => JSON.parse(i.body)), [0, 1, 2, 3, 4].map(ev));
  q.remove(items.slice(0, 2));
  q.close();
  assert.deepEqual(new DurableQueue(new FileStorage(file)).peek(10).map((i) => i.eventId), ["e2", "e3", "e4"]);
});

test("a line cut short by a crash is skipped and the next line starts clean", () => {
  const file = tmp();
  const q = new DurableQueue(new FileStorage(file));
  q.put(ev(1));
  q.close();
  fs.appendFileSync(file, '{"a":2,"e":{"event_id":"e2","ty'); // the process died in the middle of a write
  const again = new DurableQueue(new FileStorage(file));
  again.put(ev(3));
  again.close();
  assert.deepEqual(new DurableQueue(new FileStorage(file)).peek(10).map((i) => i.eventId), ["e1", "e3"]);
});

test("compaction keeps only what waits", () => {
  const storage = new MemoryStorage();
  const q = new DurableQueue(storage, { compactAfter: 3 });
  for (let i = 0; i < 10; i++) q.put(ev(i));
  for (let i = 0; i < 4; i++) q.remove(q.peek(2));
  assert.equal(storage.data.split("\n").filter(Boolean).length, 2); // compacted at the 4th answer: e8, e9
  assert.deepEqual(new DurableQueue(storage).peek(10).map((i) => i.eventId), ["e8", "e9"]);
});

test("full policies", () => {
  const oldest = new DurableQueue(new MemoryStorage(), { maxEvents: 3 });
  for (let i = 0; i < 5; i++) oldest.put(ev(i));
  assert.deepEqual([oldest.peek(9).map((i) => i.eventId), oldest.dropped], [["e2", "e3", "e4"], 2]);
  const storage = new MemoryStorage();
  const newest = new DurableQueue(storage, { maxEvents: 3, onFull: "drop_newest" });
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => newest.put(ev(i))), [true, true, true, false, false]);
  assert.deepEqual(new DurableQueue(storage).peek(9).map((i) => i.eventId), ["e0", "e1", "e2"]);
  const strict = new DurableQueue(new MemoryStorage(), { maxEvents: 1, onFull: "throw" });
  strict.put(ev(0));
  assert.throws(() => strict.put(ev(1)), QueueFull);
});

test("event ids are the Python client's", () => {
  for (const c of SHARED.ids) assert.equal(eventId(c.generation_id, c.type, c.discriminator), c.event_id);
});

test("retry-after and backoff", () => {
  assert.equal(retryAfterMs("7"), 7000);
  const now = Date.now();
  const inThirty = retryAfterMs(new Date(now + 30_000).toUTCString(), now)!;
  assert.ok(inThirty > 28_000 && inThirty <= 30_000);
  assert.equal(retryAfterMs("soon"), undefined);
  const backoff = new Backoff({ baseMs: 1000, capMs: 8000 });
  for (let i = 0; i < 6; i++) assert.ok(backoff.nextDelay() <= Math.min(8000, 1000 * 2 ** i));
  assert.equal(backoff.nextDelay(20_000), 20_000);
});

test("a rating has the id the Python client gives it", () => {
  const storage = new MemoryStorage();
  const client = new EditloopClient({ baseUrl: "http://127.0.0.1:9", apiKey: "k", storage, flushIntervalMs: 2 ** 31 - 1 });
  client.track("continue:chat:1").rated(1);
  const rating = SHARED.ids.find((c: { type: string }) => c.type === "rating");
  assert.equal(client.queue.peek(1)[0].eventId, rating.event_id);
  client.sender.stop();
});
