// Deterministic event ids, the same as the Python client's (clients/shared/settle_cases.json, "ids"): the same
// logical event always gets the same id, so a resend is a duplicate on the server, never a second event.
import { createHash } from "node:crypto";

export const ID_PREFIX = "el1-";

/** sha256 of (generation id, event type, discriminator) joined by U+001F, as 40 hex digits after a prefix. */
export function eventId(generationId: string, type: string, discriminator = ""): string {
  const digest = createHash("sha256").update(`${generationId}\x1f${type}\x1f${discriminator}`, "utf8").digest("hex");
  return ID_PREFIX + digest.slice(0, 40);
}
