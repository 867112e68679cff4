// The settle tracker against the shared cases (also run by the Python suite) and, for random edit sequences,
// against a reference that replays every change on the whole text.
import assert from "node:assert/strict";
import { test } from "node:test";

import fc from "fast-check";

import { SettleTracker } from "../src/settle";
import { SHARED } from "./shared";

type Change = [number, number, string];

function run(start: number, text: string, changes: Change[]) {
  const tracker = new SettleTracker();
  tracker.track("g", "doc", start, text, 0);
  for (const [offset, deleted, inserted] of changes) tracker.change("doc", offset, deleted, inserted, 1);
  const r = tracker.regions.get("g")!;
  return { start: r.start, text: r.text, ended: r.ended };
}

for (const c of SHARED.cases) {
  test(`shared case: ${c.name}`, () => {
    const got = run(c.start, c.text, c.changes);
    assert.deepEqual([got.text, got.ended], [c.expect.text, c.expect.ended]);
    if (!c.expect.ended) assert.equal(got.start, c.expect.start);
  });
}

test("shared: partial accepts extend one region", () => {
  const c = SHARED.partial;
  const tracker = new SettleTracker();
  for (const [offset, text] of c.accepts) assert.deepEqual(tracker.track("g", "doc", offset, text, 0), []);
  for (const [offset, deleted, inserted] of c.changes) tracker.change("doc", offset, deleted, inserted, 1);
  const [settled] = tracker.settleAll();
  assert.deepEqual([settled.finalText, settled.original], [c.expect.text, c.expect.original]);
});

/** Replay on the whole text, each character flagged in or out of the region (the Python suite's reference). */
function reference(doc: string, start: number, text: string, changes: Change[]) {
  let chars = [...doc].map((c, i) => ({ c, inside: start <= i && i < start + text.length }));
  let ended = false;
  for (const [offset, deleted, inserted] of changes) {
    const gone = chars.slice(offset, offset + deleted);
    const rest = [...chars.slice(0, offset), ...chars.slice(offset + deleted)];
    const total = chars.filter((x) => x.inside).length;
    const hit = gone.filter((x) => x.inside).length;
    let inside: boolean;
    if (ended || (total > 0 && hit === total)) {
      ended = true;
      inside = false;
    } else if (hit) inside = true;
    else inside = offset > 0 && offset < rest.length && rest[offset - 1].inside && rest[offset].inside;
    chars = [...rest.slice(0, offset), ...[...inserted].map((c) => ({ c, inside })), ...rest.slice(offset)];
    if (ended) chars = chars.map((x) => ({ c: x.c, inside: false }));
  }
  const positions = chars.flatMap((x, i) => (x.inside ? [i] : []));
  if (positions.length) assert.equal(positions[positions.length - 1] - positions[0] + 1, positions.length, "contiguous");
  return { text: chars.filter((x) => x.inside).map((x) => x.c).join(""), ended, first: positions[0] ?? -1 };
}

const alphabet = fc.constantFrom("a", "b", " ", "\n");
const scenario = fc
  .record({
    doc: fc.string({ unit: alphabet, maxLength: 12 }),
    text: fc.string({ unit: alphabet, minLength: 1, maxLength: 8 }),
    at: fc.nat(),
    raw: fc.array(fc.tuple(fc.nat(), fc.nat(), fc.string({ unit: alphabet, maxLength: 4 })), { maxLength: 12 }),
  })
  .map(({ doc, text, at, raw }) => {
    const start = at % (doc.length + 1);
    const full = doc.slice(0, start) + text + doc.slice(start);
    let length = full.length;
    const changes: Change[] = raw.map(([o, d, inserted]) => {
      const offset = o % (length + 1);
      const deleted = d % (length - offset + 1);
      length += inserted.length - deleted;
      return [offset, deleted, inserted];
    });
    return { full, start, text, changes };
  });

test("the tracker matches a replay of the whole text (fast-check)", () => {
  fc.assert(
    fc.property(scenario, ({ full, start, text, changes }) => {
      const got = run(start, text, changes);
      const want = reference(full, start, text, changes);
      assert.deepEqual([got.text, got.ended], [want.text, want.ended]);
      if (!want.ended) {
        assert.equal(got.start, want.first);
        let final = full;
        for (const [o, d, ins] of changes) final = final.slice(0, o) + ins + final.slice(o + d);
        assert.equal(final.slice(got.start, got.start + got.text.length), got.text);
      }
    }),
    { numRuns: 2000 },
  );
});

test("settles after quiet time, and on save or close", () => {
  const tracker = new SettleTracker(10_000);
  tracker.track("a", "x.ts", 0, "return 1", 0);
  tracker.track("b", "y.ts", 0, "pass", 0);
  tracker.change("x.ts", 7, 1, "2", 5_000);
  tracker.change("x.ts", 100, 0, "// far below", 14_000);
  assert.deepEqual(tracker.tick(12_000).map((s) => s.key), ["b"]);
  assert.deepEqual(tracker.tick(14_900), []);
  const [a] = tracker.tick(15_000);
  assert.deepEqual([a.finalText, a.changed], ["return 2", true]);
  tracker.track("c", "z.ts", 3, "x", 20_000);
  const [c] = tracker.saved("z.ts");
  assert.deepEqual([c.key, c.changed], ["c", false]);
  tracker.track("d", "z.ts", 0, "y", 20_000);
  assert.deepEqual(tracker.closed("z.ts").map((s) => s.key), ["d"]);
  assert.equal(tracker.regions.size, 0);
});
