// Faults injected by a proxy in front of a real `editloop serve`: 503 and 429 with Retry-After are retried no
// sooner than asked, and an answer lost after the server stored the batch is resent and counted as duplicates.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";

import { EditloopClient } from "../src/index";
import { LiveServer, freePort } from "./server";

let live: LiveServer;

before(async () => {
  live = new LiveServer(await freePort());
  live.cli("db", "upgrade");
  await live.start();
});

after(() => live.kill());

/** Each request in turn: "503", "429" (Retry-After: 1), "lose" (forward, then drop the connection), or pass. */
async function proxy(faults: string[]): Promise<{ url: string; seen: [number, string][]; close(): void }> {
  const seen: [number, string][] = [];
  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const fault = faults.shift() ?? "pass";
    seen.push([performance.now(), fault]);
    if (fault === "503" || fault === "429") {
      res.writeHead(Number(fault), fault === "429" ? { "retry-after": "1" } : {}).end();
      return;
    }
    const r = await fetch(live.url + req.url, {
      method: "POST",
      headers: { authorization: req.headers.authorization!, "content-type": "application/json" },
      body: Buffer.concat(chunks),
    });
    const body = await r.text();
    if (fault === "lose") {
      req.socket.destroy(); // stored upstream; the answer never reaches the client
      return;
    }
    res.writeHead(r.status, { "content-type": "application/json" }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, seen, close: () => server.close() };
}

const queueFile = () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), "elf-")), "queue.log");
const idle = { flushIntervalMs: 2 ** 31 - 1, backoff: { baseMs: 10, capMs: 50 } };

test("5xx and 429 are retried no sooner than Retry-After", async () => {
  const keys = live.project();
  const p = await proxy(["503", "429"]);
  const client = new EditloopClient({ baseUrl: p.url, apiKey: keys.ingest, storage: queueFile(), ...idle });
  for (let i = 0; i < 10; i++) client.track(`r-${i}`).accepted();
  assert.equal(await client.flush(10_000), true);
  const [[, a], [t429, b], [tAfter, c]] = p.seen;
  assert.deepEqual([a, b, c], ["503", "429", "pass"]);
  assert.ok(tAfter - t429 >= 1000, `retried after ${tAfter - t429} ms`);
  assert.deepEqual([client.stats.retries, client.stats.stored], [2, 10]);
  assert.equal(live.stored(keys.name).length, 10);
  await client.close();
  p.close();
});

test("a lost answer is resent and counted as duplicates, never stored twice", async () => {
  const keys = live.project();
  const p = await proxy(["lose"]);
  const client = new EditloopClient({ baseUrl: p.url, apiKey: keys.ingest, storage: queueFile(), ...idle });
  for (let i = 0; i < 10; i++) client.track(`lost-${i}`).edited(`return ${i}`);
  assert.equal(await client.flush(10_000), true);
  assert.deepEqual(p.seen.map(([, f]) => f), ["lose", "pass"]);
  assert.deepEqual([client.stats.stored, client.stats.duplicates], [0, 10]);
  const stored = live.stored(keys.name);
  assert.deepEqual([stored.length, new Set(stored).size], [10, 10]);
  await client.close();
  p.close();
});
