// The core of a VS Code extension on @editloop/client: inline completions from the editloop gateway, the user's
// decision on each, and what they kept, fed to the settle tracker from onDidChangeTextDocument.
//
// In a real extension, `import * as vscode from "vscode"` and `import { EditloopClient } from "@editloop/client"`;
// here the few parts of the VS Code API used are typed locally (VsCode below) so this file compiles and is tested
// (test/extension.test.ts) without VS Code. package.json of the extension: "main": "./extension.js",
// "activationEvents": ["onStartupFinished"], "contributes.commands": [{"command": "editloop.accepted", ...}].

import * as path from "node:path";

import { EditloopClient } from "../../src/index";

// ── the slice of the VS Code API this uses ──
interface Disposable {
  dispose(): unknown;
}
interface Position {
  line: number;
  character: number;
}
interface TextDocument {
  uri: { toString(): string };
  offsetAt(position: Position): number;
  getText(range?: { start: Position; end: Position }): string;
}
interface ContentChange {
  rangeOffset: number;
  rangeLength: number;
  text: string;
}
interface ChangeEvent {
  document: TextDocument;
  contentChanges: readonly ContentChange[];
}
export interface VsCode {
  workspace: {
    onDidChangeTextDocument(listener: (e: ChangeEvent) => void): Disposable;
    onDidSaveTextDocument(listener: (d: TextDocument) => void): Disposable;
    onDidCloseTextDocument(listener: (d: TextDocument) => void): Disposable;
    getConfiguration(section: string): { get<T>(key: string): T | undefined };
  };
  languages: {
    registerInlineCompletionItemProvider(selector: unknown, provider: InlineProvider): Disposable;
  };
  commands: { registerCommand(id: string, run: (...args: never[]) => unknown): Disposable };
}
interface InlineProvider {
  provideInlineCompletionItems(document: TextDocument, position: Position): Promise<{ items: unknown[] }>;
}
interface ExtensionContext {
  subscriptions: Disposable[];
  globalStorageUri: { fsPath: string };
}

/** Wire editloop into an editor. Returns the client; everything registered goes into `subscriptions`. */
export function connect(vscode: VsCode, subscriptions: Disposable[], client: EditloopClient): EditloopClient {
  const shown = new Map<string, string>(); // document -> the generation shown there and not yet decided

  subscriptions.push(
    vscode.languages.registerInlineCompletionItemProvider({ pattern: "**" }, {
      async provideInlineCompletionItems(document, position) {
        const uri = document.uri.toString();
        const before = shown.get(uri);
        if (before) client.track(before).rejected("replaced"); // shown, never taken, and now another one: rejected
        const offset = document.offsetAt(position);
        const prefix = document.getText().slice(0, offset);
        const suffix = document.getText().slice(offset);
        const generation = await client.generate({ prompt: prefix, suffix, max_tokens: 128, stop: ["\n\n"] });
        shown.set(uri, generation.id);
        return {
          items: [
            {
              insertText: generation.text,
              // VS Code runs the item's command once the completion has been inserted at `position`
              command: { title: "editloop", command: "editloop.accepted", arguments: [generation.id, uri, offset] },
            },
          ],
        };
      },
    }),
    vscode.commands.registerCommand("editloop.accepted", (generationId: string, uri: string, offset: number) => {
      shown.delete(uri);
      client.track(generationId).accepted({ document: uri, offset });
    }),
    vscode.workspace.onDidChangeTextDocument(({ document, contentChanges }) => {
      // VS Code lists one event's changes last-in-the-document first, so applying them in the order given is
      // right. Offsets are UTF-16 code units, as the tracker expects.
      for (const change of contentChanges) {
        client.textChanged(document.uri.toString(), change.rangeOffset, change.rangeLength, change.text);
      }
    }),
    vscode.workspace.onDidSaveTextDocument((d) => client.documentSaved(d.uri.toString())),
    vscode.workspace.onDidCloseTextDocument((d) => client.documentClosed(d.uri.toString())),
    { dispose: () => client.close() }, // settles what is tracked and flushes; the rest waits on disk for next time
  );
  return client;
}

export function activate(context: ExtensionContext): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const vscode: VsCode = require("vscode");
  const settings = vscode.workspace.getConfiguration("editloop");
  const client = new EditloopClient({
    baseUrl: settings.get<string>("url") ?? "http://127.0.0.1:8000",
    apiKey: settings.get<string>("apiKey") ?? "",
    storage: path.join(context.globalStorageUri.fsPath, "editloop-queue.log"), // the extension's own folder
  });
  connect(vscode, context.subscriptions, client);
}

export function deactivate(): void {}
