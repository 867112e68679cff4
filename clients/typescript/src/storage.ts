// Where the queue's log lives. The queue only appends lines and, to compact, replaces the whole log; an editor
// extension can implement this interface over its own storage. Every method is synchronous: an event is in the
// storage when `append` returns.
import * as fs from "node:fs";
import * as path from "node:path";

export interface QueueStorage {
  /** Append `data` (whole lines). Written to the OS before it returns: a crash of the process loses nothing. */
  append(data: string): void;
  /** The whole log ("" when there is none). */
  read(): string;
  /** Replace the whole log at once (a crash leaves either the old log or the new one). */
  replace(data: string): void;
  close(): void;
}

/** An append-only file. With `fsync`, each append is also flushed to the disk (survives a power cut; slower). */
export class FileStorage implements QueueStorage {
  private fd: number;

  constructor(
    readonly file: string,
    private readonly fsync = false,
  ) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.fd = fs.openSync(file, "a");
  }

  append(data: string): void {
    fs.writeSync(this.fd, data);
    if (this.fsync) fs.fsyncSync(this.fd);
  }

  read(): string {
    return fs.existsSync(this.file) ? fs.readFileSync(this.file, "utf8") : "";
  }

  replace(data: string): void {
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, data);
    const fd = fs.openSync(tmp, "r+");
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.closeSync(this.fd);
    fs.renameSync(tmp, this.file);
    this.fd = fs.openSync(this.file, "a");
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Memory only: for tests, or an editor that accepts losing what was queued when it stops. */
export class MemoryStorage implements QueueStorage {
  data = "";
  append(data: string): void {
    this.data += data;
  }
  read(): string {
    return this.data;
  }
  replace(data: string): void {
    this.data = data;
  }
  close(): void {}
}
