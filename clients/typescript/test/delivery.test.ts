// The TypeScript client against a real `editloop serve`: killed and restarted in the middle of a stream of events,
// a client that died before sending, invalid events, and the settle tracker's `edited`, end to end.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";

import { EditloopClient, eventId, type Rejected } from "../src/index";
import { LiveServer, freePort } from "./server";

const FAST = { batchSize: 100, flushIntervalMs: 50, backoff: { baseMs: 50, capMs: 500 } };
const queueFile = () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), "elc-")), "queue.log");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let live: LiveServer;

before(async () => {
  live = new LiveServer(await freePort());
  live.cli("db", "upgrade");
  await live.start();
});

after(() => live.kill());

test("a server killed and restarted mid-stream stores every event exactly once", async () => {
  const keys = live.project();
  const client = new EditloopClient({ baseUrl: live.url, apiKey: keys.ingest, storage: queueFile(), ...FAST });
  let restarting: Promise<void> | undefined;
  for (let i = 0; i < 1500; i++) {
    const gid = `gen-${i}-${Math.random().toString(16).slice(2)}`;
    client.logGeneration({ generationId: gid, completion: `return ${i}`, model: "m", prompt: `p${i}` });
    client.track(gid).accepted();
    if (i === 500) live.kill(); // some batches answered, some in flight, the rest queued
    if (i === 1000) restarting = live.start();
    if (i % 100 === 0) await sleep(50);
  }
  await restarting;
  assert.equal(await client.close(30_000), true, `${client.queue.size} events left`);
  const stored = live.stored(keys.name);
  assert.equal(stored.length, 3000);
  assert.equal(new Set(stored).size, 3000);
  assert.ok(client.stats.retries > 0);
  assert.equal(client.stats.stored + client.stats.duplicates, 3000);
});

test("a client that died before sending loses nothing", async () => {
  const keys = live.project();
  const file = queueFile();
  const dead = `http://127.0.0.1:${await freePort()}`;
  const script = `
    const { EditloopClient } = require(${JSON.stringify(path.resolve(__dirname, "../src/index.js"))});
    const c = new EditloopClient({ baseUrl: ${JSON.stringify(dead)}, apiKey: "k", storage: ${JSON.stringify(file)} });
    for (let i = 0; i < 200; i++) c.track("offline-" + i).rated(1);
    process.kill(process.pid, "SIGKILL");`;
  const proc = spawnSync(process.execPath, ["-e", script]);
  assert.equal(proc.signal, "SIGKILL");
  const client = new EditloopClient({ baseUrl: live.url, apiKey: keys.ingest, storage: file, ...FAST });
  assert.equal(client.queue.size, 200);
  assert.equal(await client.close(30_000), true);
  assert.equal(live.stored(keys.name).length, 200);
});

test("invalid events are reported with their field and never retried", async () => {
  const keys = live.project();
  const seen: Rejected[] = [];
  const onRejected = (r: Rejected) => seen.push(r);
  const client = new EditloopClient({ baseUrl: live.url, apiKey: keys.ingest, storage: queueFile(), onRejected, ...FAST });
  client.track("g-bad").rated(5); // alone: the whole batch is refused (422)
  assert.equal(await client.flush(10_000), true);
  client.track("g-1").accepted();
  client.track("g-2").rated(-3); // beside a valid event: reported by index in a 200
  client.track("g-3").rejected("no");
  assert.equal(await client.close(10_000), true);
  assert.deepEqual(seen.map((r) => [r.event.generation_id, r.field]), [["g-bad", "events[0].score"], ["g-2", "events[1].score"]]);
  assert.match(seen[0].detail, /less than or equal to 1/);
  assert.deepEqual(live.stored(keys.name).sort(), [eventId("g-1", "accepted"), eventId("g-3", "rejected")].sort());
});

test("a settled edit posts what the user kept", async () => {
  const keys = live.project();
  const client = new EditloopClient({ baseUrl: live.url, apiKey: keys.ingest, storage: queueFile(), settleMs: 300, ...FAST });
  const doc = "function add(a, b) {\n";
  client.logGeneration({ generationId: "g-settle", completion: "  return a+b;", model: "m", prompt: doc });
  client.track("g-settle").accepted({ document: "file:///x.ts", offset: doc.length });
  client.textChanged("file:///x.ts", 0, 0, "// math\n"); // before it: a shift
  client.textChanged("file:///x.ts", doc.length + 8 + 10, 1, " + "); // "a+b" -> "a + b"
  const admin = { authorization: `Bearer ${keys.admin}` };
  let g: { outcome?: string; final_text?: string } = {};
  for (let i = 0; i < 100 && g.outcome !== "edited"; i++) {
    await sleep(100);
    g = (await (await fetch(`${live.url}/v1/generations/g-settle`, { headers: admin })).json()) as typeof g;
  }
  assert.deepEqual([g.outcome, g.final_text], ["edited", "  return a + b;"]);
  assert.equal(await client.close(10_000), true);
});
