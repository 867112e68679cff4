// The VS Code example's core, driven by a stand-in for the VS Code API: a completion is shown, accepted, edited in
// the document, and the document is saved; the client queues generation-side events and the settled edit.
import assert from "node:assert/strict";
import { test } from "node:test";

import { connect, type VsCode } from "../examples/vscode-extension/extension";
import { EditloopClient, MemoryStorage, eventId } from "../src/index";

test("the extension core turns editor events into accepted, rejected and edited", async () => {
  const listeners: Record<string, (arg: never) => void> = {};
  let provider: { provideInlineCompletionItems: (d: never, p: never) => Promise<{ items: unknown[] }> } | undefined;
  const on = (name: string) => (fn: (arg: never) => void) => ((listeners[name] = fn), { dispose() {} });
  const vscode = {
    workspace: {
      onDidChangeTextDocument: on("change"),
      onDidSaveTextDocument: on("save"),
      onDidCloseTextDocument: on("close"),
      getConfiguration: () => ({ get: () => undefined }),
    },
    languages: { registerInlineCompletionItemProvider: (_: unknown, p: typeof provider) => ((provider = p), { dispose() {} }) },
    commands: { registerCommand: (id: string, fn: (arg: never) => void) => ((listeners[id] = fn), { dispose() {} }) },
  } as unknown as VsCode;

  const storage = new MemoryStorage();
  const client = new EditloopClient({ baseUrl: "http://127.0.0.1:9", apiKey: "k", storage, flushIntervalMs: 60_000 });
  let n = 0;
  const realFetch = globalThis.fetch;
  globalThis.fetch = (async () => // the gateway's /v1/completions answer
    new Response(JSON.stringify({ id: `cmpl-${++n}`, model: "v1", choices: [{ text: "return a+b" }] }))) as typeof fetch;
  const subscriptions: { dispose(): unknown }[] = [];
  connect(vscode, subscriptions, client);

  let text = "def add(a, b):\n    ";
  const doc = { uri: { toString: () => "file:///add.py" }, offsetAt: () => text.length, getText: () => text };
  const edit = (rangeOffset: number, rangeLength: number, inserted: string) => {
    text = text.slice(0, rangeOffset) + inserted + text.slice(rangeOffset + rangeLength);
    (listeners.change as (e: unknown) => void)({ document: doc, contentChanges: [{ rangeOffset, rangeLength, text: inserted }] });
  };

  await provider!.provideInlineCompletionItems(doc as never, {} as never); // cmpl-1 shown
  const { items } = await provider!.provideInlineCompletionItems(doc as never, {} as never); // cmpl-2: cmpl-1 rejected
  globalThis.fetch = realFetch;
  const item = items[0] as { insertText: string; command: { arguments: [string, string, number] } };
  const at = text.length;
  edit(at, 0, item.insertText); // VS Code inserts the completion, then runs its command
  (listeners["editloop.accepted"] as (...a: unknown[]) => void)(...item.command.arguments);
  edit(at + 8, 0, " "); // "return a +b"
  edit(at + 10, 0, " "); // "return a + b"
  (listeners.save as (d: unknown) => void)(doc);

  const queued = client.queue.peek(10).map((q) => JSON.parse(q.body));
  assert.deepEqual(
    queued.map((e) => [e.type, e.generation_id]),
    [["rejected", "cmpl-1"], ["accepted", "cmpl-2"], ["edited", "cmpl-2"]],
  );
  assert.equal(queued[2].final_text, "return a + b");
  assert.equal(queued[2].event_id, eventId("cmpl-2", "edited", "return a + b"));
  client.sender.stop();
  client.queue.close();
});
