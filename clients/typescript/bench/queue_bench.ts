// What the TypeScript client costs an editor: the median time of one `track(...).accepted()` (an event appended to
// the queue's file before the call returns), and how fast a full queue drains to a local `editloop serve`.
//
//   npm run bench                                   # a server on a temporary SQLite file
//   EDITLOOP_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/db npm run bench
//
// Needs the repository's Python (EDITLOOP_PYTHON, else the repository's .venv) to start the server.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { EditloopClient } from "../src/index";
import { LiveServer, freePort } from "../test/server";

const EVENTS = Number(process.env.EVENTS ?? 20_000);
const BATCH = Number(process.env.BATCH ?? 1000);

async function main(): Promise<void> {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "elbench-")), "queue.log");
  const idle = { batchSize: Number.MAX_SAFE_INTEGER, flushIntervalMs: 2 ** 31 - 1 }; // nothing is sent while timing
  const writer = new EditloopClient({ baseUrl: "http://127.0.0.1:9", apiKey: "unused", storage: file, ...idle });
  const times: number[] = [];
  for (let i = 0; i < EVENTS; i++) {
    const handle = writer.track(`bench-${i}`);
    const t0 = process.hrtime.bigint();
    handle.accepted();
    times.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  writer.queue.close();
  times.sort((a, b) => a - b);
  const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))].toFixed(1);
  console.log(`enqueue: ${EVENTS} events, median ${q(0.5)} µs, p99 ${q(0.99)} µs`);

  const server = new LiveServer(await freePort(), process.env.EDITLOOP_BENCH_DATABASE_URL);
  server.cli("db", "upgrade");
  const keys = server.project();
  await server.start();
  try {
    const client = new EditloopClient({ baseUrl: server.url, apiKey: keys.ingest, storage: file, ...idle, batchSize: BATCH });
    const n = client.queue.size;
    const t0 = performance.now();
    if (!(await client.sender.flush(600_000))) throw new Error("the queue did not drain");
    const seconds = (performance.now() - t0) / 1000;
    if (client.stats.stored !== n) throw new Error(`stored ${client.stats.stored} of ${n}`);
    await client.close();
    console.log(`drain: ${n} events in ${seconds.toFixed(2)} s = ${Math.round(n / seconds)} events/s (batches of ${BATCH})`);
  } finally {
    server.kill();
  }
}

void main();
