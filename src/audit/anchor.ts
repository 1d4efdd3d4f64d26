import type { Keystore } from "../hsm/index.js";
import { type AuditCheckpoint, canonicalJson, type Store } from "../store/index.js";

/**
 * The anchor: a copy of a store's newest checkpoint kept in the HSM, as a private
 * token data object, where whoever can rewrite the database (but holds no PIN) can't
 * roll it back. Checkpoints in the database can be deleted together with the records
 * they cover; the anchor stays, so a log cut back past it reads as truncated.
 *
 * One anchor per store, even where stores share a token: it is named after the
 * store's first record, which the keyed chain makes impossible to swap.
 */

const LABEL_PREFIX = "custos-audit-anchor:";

/** What `readAnchor` finds: nothing (no store or no anchor yet), an anchor, or bytes that are not one. */
export type Anchor = { readonly checkpoint: AuditCheckpoint } | { readonly unreadable: true } | undefined;

/** The anchor's label for `store`, or undefined while the store has no first record. */
export async function anchorLabel(store: Store): Promise<string | undefined> {
  const [first] = await store.readAuditRange(1, 1);
  return first === undefined ? undefined : `${LABEL_PREFIX}${first.hash.slice(0, 32)}`;
}

/** The anchor under `label`; of two (a replacement cut short), the newer. */
export async function readAnchor(keystore: Keystore, label: string): Promise<Anchor> {
  const values = await keystore.readData(label);
  if (values.length === 0) return undefined;
  const checkpoints = values.map(parseCheckpoint).filter((c) => c !== undefined);
  const newest = checkpoints.sort((a, b) => b.seq - a.seq)[0];
  return newest === undefined ? { unreadable: true } : { checkpoint: newest };
}

export function writeAnchor(keystore: Keystore, label: string, checkpoint: AuditCheckpoint): Promise<void> {
  return keystore.writeData(label, Buffer.from(canonicalJson(checkpoint), "utf8"));
}

function parseCheckpoint(value: Buffer): AuditCheckpoint | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value.toString("utf8"));
  } catch {
    return undefined;
  }
  const c = parsed as Record<string, unknown> | null;
  if (typeof c !== "object" || c === null || !Number.isSafeInteger(c.seq) || (c.seq as number) < 1) return undefined;
  const texts = ["hash", "time", "keyLabel", "keyId", "scheme", "signature"] as const;
  if (!texts.every((k) => typeof c[k] === "string")) return undefined;
  return {
    seq: c.seq as number,
    ...(Object.fromEntries(texts.map((k) => [k, c[k]])) as Omit<AuditCheckpoint, "seq">),
  };
}
