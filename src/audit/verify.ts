import { createPublicKey, type KeyObject, verify as verifySignature } from "node:crypto";
import type { HsmKeyRef, Keystore } from "../hsm/index.js";
import {
  type AuditChainKey,
  type AuditCheckpoint,
  auditCheckpointMessage,
  auditRecordHash,
  GENESIS_HASH,
  type Store,
  type StoredAuditRecord,
} from "../store/index.js";
import { anchorLabel, readAnchor } from "./anchor.js";
import { INIT_ACTION } from "./entry.js";
import { parseRestoreDetails, RESTORE_ACTION, type RestoreSummary, restoreSummary } from "./restore.js";

/** What a verifier can say about one record (or one checkpoint, named by its seq). */
export type AuditProblemKind =
  | "edited"
  | "deleted"
  | "inserted"
  | "reordered"
  | "broken_link"
  | "checkpoint_invalid"
  | "checkpoint_mismatch"
  | "truncated";

export interface AuditProblem {
  readonly seq: number;
  readonly kind: AuditProblemKind;
  readonly message: string;
}

export interface AuditVerifyReport {
  /** True when no problem was found. */
  readonly ok: boolean;
  /** Records read. */
  readonly records: number;
  /** Checkpoints checked. */
  readonly checkpoints: number;
  /**
   * Records after the newest validly signed checkpoint. Their chain links are checked,
   * but no signature covers them yet, so removing records from the very end of the
   * log would go unnoticed until the next checkpoint.
   */
  readonly unsignedTail: number;
  /** Sorted by seq; at most `MAX_PROBLEMS`. */
  readonly problems: AuditProblem[];
  /**
   * Restores of a backup the log records (`custos restore`), oldest first: records
   * that hash correctly. Records lost with a restore are not a problem when a genuine
   * restore record names the checkpoint that vouched for them (see restore.ts).
   */
  readonly restores: RestoreSummary[];
}

/** The scheme checkpoints are signed with. */
export const CHECKPOINT_SCHEME = "ecdsa-p256-sha256";

/** Beyond this many problems the log is plainly rewritten; listing more helps no one. */
export const MAX_PROBLEMS = 1000;

const PAGE_SIZE = 1000;
/**
 * Records whose own hash fails, kept for classification; pairwise matching is
 * quadratic in this. Past it, a record is still checked for a shift (linear).
 */
const MAX_SUSPECTS = 300;

export interface VerifyDeps {
  readonly store: Store;
  readonly keystore: Keystore;
  readonly checkpointKey: HsmKeyRef;
  /** The key the store's chain is keyed with (see `AuditLog.open`); without it every hash is checked as SHA-256. */
  readonly chain?: AuditChainKey | undefined;
}

/** A record's hash were it at `seq` after `prevHash`. */
type Hasher = (seq: number, prevHash: string, r: StoredAuditRecord) => string;

function hasherFor(chain: AuditChainKey | undefined): Hasher {
  return (seq, prevHash, r) => auditRecordHash(seq, prevHash, r, r.detailsJson, chain);
}

/** Restore records looked at when searching for the one that supersedes the anchor; a real log holds a handful. */
const RESTORE_SEARCH_LIMIT = 1000;

/**
 * Walks the whole journal and its checkpoints and names what is wrong. One
 * tampering is reported once, at the record it concerns: an edited field is
 * `edited` at that seq (its own hash fails, its links hold); deleted records are
 * `deleted` at the first missing seq (their neighbours' broken link is explained
 * by the gap); two swapped records are `reordered` at both seqs (each one's
 * contents hash correctly at the other's place). Link failures next to a record
 * already named are not reported again. On an initialised store, record 1 must
 * be the initialisation record. Checkpoints are checked against the configured
 * checkpoint key only: any other HSM signing key could have been made to sign a
 * forged head through the KMS.
 */
export async function verifyAuditLog(deps: VerifyDeps): Promise<AuditVerifyReport> {
  const { store } = deps;
  const hash = hasherFor(deps.chain);
  const checkpoints = await store.listAuditCheckpoints();
  const initialized = await store.isInitialized();

  const problems: AuditProblem[] = [];
  const report = (seq: number, kind: AuditProblemKind, message: string): void => {
    problems.push({ seq, kind, message });
  };
  // The HSM's copy of the newest checkpoint is checked as one more checkpoint: the database can't take it away.
  const label = await anchorLabel(store);
  const anchor = label === undefined ? undefined : await readAnchor(deps.keystore, label);
  if (anchor !== undefined && "unreadable" in anchor) {
    report(0, "checkpoint_invalid", "the checkpoint anchored in the HSM is unreadable");
  }
  const anchorOnly =
    anchor !== undefined && "checkpoint" in anchor && !checkpoints.some((c) => sameCheckpoint(c, anchor.checkpoint))
      ? anchor.checkpoint
      : undefined;
  const checkpointSeqs = new Set([...checkpoints, ...(anchorOnly === undefined ? [] : [anchorOnly])].map((c) => c.seq));
  const restoreRecords: StoredAuditRecord[] = [];

  let records = 0;
  const suspects = new Map<number, StoredAuditRecord>();
  // Seqs past MAX_SUSPECTS that hash correctly one place up or down: a renumbering's tail.
  const lateShifts: Shifted = { up: [], down: [] };
  const brokenLinks = new Set<number>();
  const gaps: Array<[number, number]> = [];
  const storedHashAt = new Map<number, string>();
  let first: StoredAuditRecord | undefined;
  let prev: StoredAuditRecord | undefined;
  let expected = 1;

  // Paged by "after the last seq read", so a row far beyond the others costs one read, not one per empty range.
  let after = Number.NEGATIVE_INFINITY;
  for (;;) {
    const page = await store.readAuditAfter(after, PAGE_SIZE);
    for (const r of page) {
      records++;
      // seq is 1-based: anything at or below 0 was put there by hand.
      if (r.seq < 1) {
        report(r.seq, "inserted", `record ${r.seq} is outside the chain (seqs start at 1)`);
        continue;
      }
      if (r.seq === 1) first = r;
      if (r.action === RESTORE_ACTION) restoreRecords.push(r);
      if (r.seq > expected) gaps.push([expected, r.seq - 1]);
      expected = r.seq + 1;
      if (checkpointSeqs.has(r.seq)) storedHashAt.set(r.seq, r.hash);
      if (hash(r.seq, r.prevHash, r) !== r.hash) {
        if (suspects.size < MAX_SUSPECTS) {
          suspects.set(r.seq, r);
        } else {
          const shift = shiftOf(r, hash);
          if (shift !== undefined) lateShifts[shift].push(r.seq);
          else report(r.seq, "edited", `record ${r.seq} does not match its hash`);
        }
      }
      const predecessorHash = r.seq === 1 ? GENESIS_HASH : prev?.seq === r.seq - 1 ? prev.hash : undefined;
      if (predecessorHash !== undefined && r.prevHash !== predecessorHash) brokenLinks.add(r.seq);
      prev = r;
    }
    const last = page.at(-1);
    // A seq beyond 2^53 can read back equal to the one before it: stop rather than read it again.
    if (last === undefined || page.length < PAGE_SIZE || !(last.seq > after)) break;
    after = last.seq;
  }
  const lastSeq = prev?.seq ?? 0;

  const explained = new Set<number>();

  classifySwaps(suspects, explained, report, hash);
  classifyShifts(suspects, lateShifts, explained, report, hash);
  classifyMoves(suspects, explained, report, hash);

  // A gap is one problem, however long: the records in it were deleted if the record after it is genuine;
  // if that one does not belong to the chain either, it was put there, out of sequence.
  for (const [a, b] of gaps) {
    const empty = a === b ? `seq ${a}` : `seqs ${a}..${b}`;
    const next = b + 1;
    if (suspects.has(next) && !explained.has(next)) {
      report(
        next,
        "inserted",
        `record ${next} does not belong to the chain (inserted out of sequence; ${empty} empty)`,
      );
      explained.add(next);
    } else {
      report(a, "deleted", a === b ? `record ${a} is missing` : `records ${a}..${b} are missing`);
    }
  }

  for (const r of suspects.values()) {
    if (explained.has(r.seq)) continue;
    const foreignBefore = brokenLinks.has(r.seq);
    const foreignAfter = r.seq === lastSeq || brokenLinks.has(r.seq + 1);
    if (foreignBefore && foreignAfter) {
      report(r.seq, "inserted", `record ${r.seq} does not belong to the chain (inserted or replaced wholesale)`);
    } else {
      report(r.seq, "edited", `record ${r.seq} was edited: its contents no longer match its hash`);
    }
    explained.add(r.seq);
  }

  for (const s of [...brokenLinks].sort((a, b) => a - b)) {
    if (suspects.has(s) || suspects.has(s - 1) || explained.has(s) || explained.has(s - 1)) continue;
    report(
      s,
      "broken_link",
      `record ${s} does not link to record ${s - 1}: one of them was rewritten with a recomputed hash`,
    );
  }

  const publicKey = await checkpointPublicKey(deps);
  const superseded =
    anchorOnly !== undefined &&
    restoreRecords.some((r) => supersedes(r, anchorOnly, hash, checkpoints, deps.checkpointKey, publicKey));
  const anchored = anchorOnly === undefined || superseded ? checkpoints : [...checkpoints, anchorOnly];
  const signedThrough = checkCheckpoints(deps.checkpointKey, publicKey, anchored, storedHashAt, lastSeq, report);
  const restores = restoreRecords.flatMap((r) => {
    const details = hash(r.seq, r.prevHash, r) === r.hash ? parseRestoreDetails(r.detailsJson) : undefined;
    return details === undefined ? [] : [restoreSummary(r.seq, r.time, details)];
  });

  // The store writes its initialisation record first, in the same transaction that marks it initialised:
  // an initialised store whose log starts elsewhere had its log emptied or replaced from the start.
  if (initialized && !problems.some((p) => p.seq === 1)) {
    if (first === undefined) {
      report(1, "deleted", `record 1, the store's initialisation record (${INIT_ACTION}), is missing`);
    } else if (first.action !== INIT_ACTION) {
      report(
        1,
        "inserted",
        `record 1 is not the store's initialisation record (${INIT_ACTION}): the log was replaced from its start`,
      );
    }
  }

  problems.sort((a, b) => a.seq - b.seq);
  const capped = problems.slice(0, MAX_PROBLEMS);
  return {
    ok: problems.length === 0,
    records,
    checkpoints: checkpoints.length,
    unsignedTail: Math.max(0, lastSeq - signedThrough),
    problems: capped,
    restores,
  };
}

/**
 * The seq of the genuine restore record that supersedes `anchor` (the HSM's copy of
 * the newest checkpoint), if the log holds one: see `supersedes`. The server asks
 * before it moves an anchor its log no longer reaches.
 */
export async function restoreSuperseding(deps: VerifyDeps, anchor: AuditCheckpoint): Promise<number | undefined> {
  const found = await deps.store.listAudit({ action: RESTORE_ACTION, descending: true, limit: RESTORE_SEARCH_LIMIT });
  if (found.length === 0) return undefined;
  const checkpoints = await deps.store.listAuditCheckpoints();
  const publicKey = await checkpointPublicKey(deps);
  const hash = hasherFor(deps.chain);
  for (const { seq } of found) {
    const [r] = await deps.store.readAuditRange(seq, seq);
    if (r !== undefined && supersedes(r, anchor, hash, checkpoints, deps.checkpointKey, publicKey)) return seq;
  }
  return undefined;
}

/**
 * Whether `r` is a genuine restore record naming `anchor`: its contents hash to its
 * stored hash under the chain key, and a checkpoint signed by the audit checkpoint key
 * is at its seq with that hash, so neither the record nor the anchor it names can have
 * been written without the HSM.
 */
function supersedes(
  r: StoredAuditRecord,
  anchor: AuditCheckpoint,
  hash: Hasher,
  checkpoints: readonly AuditCheckpoint[],
  key: HsmKeyRef,
  publicKey: KeyObject,
): boolean {
  if (r.action !== RESTORE_ACTION || hash(r.seq, r.prevHash, r) !== r.hash) return false;
  const named = parseRestoreDetails(r.detailsJson)?.supersededAnchor;
  if (named == null || named.seq !== anchor.seq || named.hash !== anchor.hash || named.time !== anchor.time) {
    return false;
  }
  return checkpoints.some(
    (cp) => cp.seq === r.seq && cp.hash === r.hash && checkpointSignatureValid(cp, key, publicKey),
  );
}

async function checkpointPublicKey(deps: VerifyDeps): Promise<KeyObject> {
  return createPublicKey({ key: await deps.keystore.publicKey(deps.checkpointKey), format: "der", type: "spki" });
}

type Report = (seq: number, kind: AuditProblemKind, message: string) => void;

/** Seqs of records that hash correctly one place up (were renumbered up) or down. */
interface Shifted {
  readonly up: number[];
  readonly down: number[];
}

/** Which way `r` was renumbered by one, if its contents hash correctly at the seq next to its own. */
function shiftOf(r: StoredAuditRecord, hash: Hasher): keyof Shifted | undefined {
  if (hash(r.seq - 1, r.prevHash, r) === r.hash) return "up";
  if (hash(r.seq + 1, r.prevHash, r) === r.hash) return "down";
  return undefined;
}

/**
 * Records renumbered by one (a row inserted or deleted, later rows shifted to
 * hide the gap) hash correctly at their old seq. A run shifted up means a row was
 * inserted just before it; a run shifted down means the record at the run's
 * start was deleted. `shifted` comes with those found past the suspects' cap; the
 * suspects' own are added to it.
 */
function classifyShifts(
  suspects: Map<number, StoredAuditRecord>,
  shifted: Shifted,
  explained: Set<number>,
  report: Report,
  hash: Hasher,
): void {
  for (const r of suspects.values()) {
    if (explained.has(r.seq)) continue;
    const shift = shiftOf(r, hash);
    if (shift !== undefined) shifted[shift].push(r.seq);
  }
  const { up, down } = shifted;
  for (const [start, end] of runs(up)) {
    report(start - 1, "inserted", `record ${start - 1} was inserted; records ${start}..${end} were renumbered up`);
    for (let s = start - 1; s <= end; s++) explained.add(s);
  }
  for (const [start, end] of runs(down)) {
    report(start, "deleted", `record ${start} was deleted; records ${start + 1}..${end + 1} were renumbered down`);
    for (let s = start; s <= end; s++) explained.add(s);
  }
}

/**
 * True when `p`'s contents hash correctly at `q`'s place: either its fields were
 * swapped with `q`'s (they match `q`'s stored hash and prevHash) or the whole row
 * was moved (it matches its own hash at `q`'s seq).
 */
function belongsAt(p: StoredAuditRecord, q: StoredAuditRecord, hash: Hasher): boolean {
  return hash(q.seq, q.prevHash, p) === q.hash || hash(q.seq, p.prevHash, p) === p.hash;
}

/**
 * Two records that each belong at the other's place were swapped. Found before
 * shifts, because an adjacent whole-row swap also looks like a one-step shift.
 */
function classifySwaps(
  suspects: Map<number, StoredAuditRecord>,
  explained: Set<number>,
  report: Report,
  hash: Hasher,
): void {
  const candidates = [...suspects.values()];
  for (const [i, p] of candidates.entries()) {
    if (explained.has(p.seq)) continue;
    for (const q of candidates.slice(i + 1)) {
      if (explained.has(q.seq) || !belongsAt(p, q, hash) || !belongsAt(q, p, hash)) continue;
      report(p.seq, "reordered", `records ${p.seq} and ${q.seq} were swapped`);
      report(q.seq, "reordered", `records ${q.seq} and ${p.seq} were swapped`);
      explained.add(p.seq);
      explained.add(q.seq);
      break;
    }
  }
}

/** Records moved around a longer cycle: each names where its contents belong. */
function classifyMoves(
  suspects: Map<number, StoredAuditRecord>,
  explained: Set<number>,
  report: Report,
  hash: Hasher,
): void {
  const candidates = [...suspects.values()].filter((r) => !explained.has(r.seq));
  for (const p of candidates) {
    const home = candidates.find((q) => q.seq !== p.seq && belongsAt(p, q, hash));
    if (home === undefined) continue;
    report(p.seq, "reordered", `record ${p.seq} holds the contents of record ${home.seq}`);
    explained.add(p.seq);
  }
}

/** Consecutive runs in a list of seqs, as [first, last] pairs. */
function runs(seqs: number[]): Array<[number, number]> {
  const sorted = [...seqs].sort((a, b) => a - b);
  const out: Array<[number, number]> = [];
  for (const s of sorted) {
    const last = out.at(-1);
    if (last !== undefined && last[1] === s - 1) last[1] = s;
    else out.push([s, s]);
  }
  return out;
}

function checkCheckpoints(
  key: HsmKeyRef,
  publicKey: KeyObject,
  checkpoints: readonly AuditCheckpoint[],
  storedHashAt: ReadonlyMap<number, string>,
  lastSeq: number,
  report: Report,
): number {
  let signedThrough = 0;
  let truncatedTo: number | undefined;
  for (const cp of checkpoints) {
    if (!checkpointSignatureValid(cp, key, publicKey)) {
      report(
        cp.seq,
        "checkpoint_invalid",
        `the checkpoint at record ${cp.seq} is not signed by the audit checkpoint key`,
      );
      continue;
    }
    signedThrough = Math.max(signedThrough, cp.seq);
    if (cp.seq > lastSeq) {
      truncatedTo = Math.max(truncatedTo ?? 0, cp.seq);
      continue;
    }
    const stored = storedHashAt.get(cp.seq);
    // A missing record is already reported as deleted.
    if (stored !== undefined && stored !== cp.hash) {
      report(
        cp.seq,
        "checkpoint_mismatch",
        `record ${cp.seq} is not the record the checkpoint signed: the chain up to it was rewritten`,
      );
    }
  }
  if (truncatedTo !== undefined) {
    report(
      lastSeq + 1,
      "truncated",
      `the log ends at record ${lastSeq} but a signed checkpoint vouches for records up to ${truncatedTo}`,
    );
  }
  return signedThrough;
}

function sameCheckpoint(a: AuditCheckpoint, b: AuditCheckpoint): boolean {
  return a.seq === b.seq && a.hash === b.hash && a.time === b.time && a.signature === b.signature;
}

function checkpointSignatureValid(cp: AuditCheckpoint, key: HsmKeyRef, publicKey: KeyObject): boolean {
  if (cp.keyLabel !== key.label || cp.keyId !== key.id || cp.scheme !== CHECKPOINT_SCHEME) return false;
  try {
    return verifySignature(
      "sha256",
      auditCheckpointMessage(cp.seq, cp.hash, cp.time),
      { key: publicKey, dsaEncoding: "ieee-p1363" },
      Buffer.from(cp.signature, "base64"),
    );
  } catch {
    return false;
  }
}
