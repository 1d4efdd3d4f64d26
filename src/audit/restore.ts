/**
 * A restore, in the log. Putting a backup back cuts the log to the backup's newest
 * record while the HSM's anchor (see anchor.ts) still vouches for records past it:
 * `verify` would call the log truncated for good, and the server would never move the
 * anchor again. `custos restore` says what happened instead, in a record appended to
 * the copy before it is installed, with a checkpoint signed at that record: which
 * backup, which database it replaced, and the anchor it supersedes. Verification
 * and the server treat that anchor as superseded only when the record is genuine
 * (see `verify.ts`), and only a holder of the PIN can make one: the same people who
 * could move the anchor by hand.
 */

export const RESTORE_ACTION = "store.restore";

export interface RestoreDetails {
  /** The copy put back: its SHA-256 and the newest audit record it held. */
  readonly backup: { readonly sha256: string; readonly newestSeq: number };
  /** The database replaced and kept aside (its file name and newest record), or null where there was none. */
  readonly replaced: { readonly file: string; readonly newestSeq: number | null } | null;
  /** The checkpoint the HSM held when the copy was put back, or null where it held none. */
  readonly supersededAnchor: { readonly seq: number; readonly hash: string; readonly time: string } | null;
}

/** A restore as `verify` reports it. */
export interface RestoreSummary {
  /** The restore record's seq. */
  readonly seq: number;
  readonly time: string;
  readonly backupSeq: number;
  /** Records the HSM's checkpoint vouched for that the log lost: `backupSeq + 1 .. supersededSeq`. */
  readonly supersededSeq: number | null;
  readonly replacedFile: string | null;
  readonly replacedNewestSeq: number | null;
}

/** The details of a restore record, or undefined if they are not the shape `custos restore` writes. */
export function parseRestoreDetails(detailsJson: string): RestoreDetails | undefined {
  let d: unknown;
  try {
    d = JSON.parse(detailsJson);
  } catch {
    return undefined;
  }
  if (!isObject(d) || !isObject(d.backup) || typeof d.backup.sha256 !== "string" || !isSeq(d.backup.newestSeq)) {
    return undefined;
  }
  const { replaced, supersededAnchor: anchor } = d;
  if (
    replaced !== null &&
    !(isObject(replaced) && typeof replaced.file === "string" && isSeqOrNull(replaced.newestSeq))
  ) {
    return undefined;
  }
  if (
    anchor !== null &&
    !(isObject(anchor) && isSeq(anchor.seq) && typeof anchor.hash === "string" && typeof anchor.time === "string")
  ) {
    return undefined;
  }
  return d as unknown as RestoreDetails;
}

export function restoreSummary(seq: number, time: string, d: RestoreDetails): RestoreSummary {
  return {
    seq,
    time,
    backupSeq: d.backup.newestSeq,
    supersededSeq: d.supersededAnchor?.seq ?? null,
    replacedFile: d.replaced?.file ?? null,
    replacedNewestSeq: d.replaced?.newestSeq ?? null,
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isSeq(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

function isSeqOrNull(v: unknown): boolean {
  return v === null || isSeq(v);
}
