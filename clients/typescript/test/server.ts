// A real `editloop serve` for the tests, started with the repository's Python (EDITLOOP_PYTHON, else the
// repository's .venv) on an SQLite file; a test can kill it and start it again on the same port.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

export const REPO = path.resolve(__dirname, "../../../..");
const PYTHON = process.env.EDITLOOP_PYTHON ?? path.join(REPO, ".venv", "bin", "python");

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

export class LiveServer {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), "editloop-ts-"));
  private proc?: ChildProcess;

  constructor(
    readonly port: number,
    readonly databaseUrl = `sqlite:///${path.join(fs.mkdtempSync(path.join(os.tmpdir(), "editloop-db-")), "editloop.db")}`,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private env(): NodeJS.ProcessEnv {
    const pythonPath = [REPO, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter);
    return {
      ...process.env,
      EDITLOOP_DATABASE_URL: this.databaseUrl,
      EDITLOOP_DATA_DIR: path.join(this.dir, "data"),
      PYTHONPATH: pythonPath,
    };
  }

  cli(...args: string[]): string {
    return execFileSync(PYTHON, ["-m", "api.cli", ...args], { env: this.env(), cwd: this.dir, encoding: "utf8" });
  }

  /** A new project with an ingest and an admin key, made by the functions `editloop projects create` and
   * `editloop keys create` call (in one Python process: each CLI call would start Python again). */
  project(): { name: string; ingest: string; admin: string } {
    const name = `ts-${Math.random().toString(16).slice(2, 10)}`;
    const script = [
      "import json, sys",
      "from core.db import session_scope",
      "from core.projects import Role, create_key, create_project",
      "with session_scope(sys.argv[1]) as s:",
      "    p = create_project(s, sys.argv[2])",
      "    print(json.dumps({r.value: create_key(s, p, r)[1] for r in (Role.ingest, Role.admin)}))",
    ].join("\n");
    const out = execFileSync(PYTHON, ["-c", script, this.databaseUrl, name], { env: this.env(), encoding: "utf8" });
    const keys = JSON.parse(out);
    return { name, ingest: keys.ingest, admin: keys.admin };
  }

  async start(): Promise<void> {
    const log = fs.openSync(path.join(this.dir, "serve.log"), "a");
    this.proc = spawn(PYTHON, ["-m", "api.cli", "serve", "--port", String(this.port), "--no-background"], {
      env: this.env(),
      cwd: this.dir,
      stdio: ["ignore", log, log],
      detached: true, // its own process group: kill() takes the server and nothing else
    });
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try {
        if ((await fetch(`${this.url}/healthz`)).ok) return;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    this.kill();
    throw new Error(`editloop serve did not start: ${fs.readFileSync(path.join(this.dir, "serve.log"), "utf8").slice(-2000)}`);
  }

  kill(): void {
    if (this.proc?.pid && this.proc.exitCode === null) {
      try {
        process.kill(-this.proc.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    this.proc = undefined;
  }

  /** Every stored event id of the project, with repeats if there were any (on SQLite). */
  stored(project: string): string[] {
    const db = this.databaseUrl.replace("sqlite:///", "");
    const script =
      "import sqlite3, sys, json; c = sqlite3.connect(sys.argv[1]); print(json.dumps([r[0] for r in c.execute(" +
      "'SELECT e.event_id FROM feedback_events e JOIN projects p ON p.id = e.project_id WHERE p.name = ?', (sys.argv[2],))]))";
    return JSON.parse(execFileSync(PYTHON, ["-c", script, db, project], { encoding: "utf8" }));
  }
}
