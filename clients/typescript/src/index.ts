export {
  EditloopClient,
  Tracked,
  type ClientOptions,
  type Generation,
  type GenerateRequest,
  type GenerationRecord,
} from "./client";
export { Backoff, Sender, retryAfterMs, type DeliveryStats, type Rejected } from "./delivery";
export { eventId } from "./ids";
export { DurableQueue, QueueFull, type FullPolicy, type Queued } from "./queue";
export { DEFAULT_SETTLE_MS, SettleTracker, applyChange, type Region, type Settled } from "./settle";
export { FileStorage, MemoryStorage, type QueueStorage } from "./storage";
