import { createSecretKey, type KeyObject } from "node:crypto";
import { CustosError } from "../errors/index.js";
import { ensureKeyPair, type HsmKeyRef, type Keystore } from "../hsm/index.js";
import type { Logger } from "../log/index.js";
import {
  type AuditChainKey,
  type AuditCheckpoint,
  type AuditEntry,
  type AuditQuery,
  type AuditRecord,
  auditCheckpointMessage,
  type Store,
} from "../store/index.js";
import { anchorLabel, readAnchor, writeAnchor } from "./anchor.js";
import { type Actor, auditEntry } from "./entry.js";
import { RESTORE_ACTION, type RestoreDetails } from "./restore.js";
import {
  type AuditVerifyReport,
  CHECKPOINT_SCHEME,
  restoreSuperseding,
  type VerifyDeps,
  verifyAuditLog,
} from "./verify.js";

/** HSM labels of the audit keys `provisionKeys` creates. */
export const AUDIT_HMAC_KEY_LABEL = "custos-audit-hmac";
export const AUDIT_CHECKPOINT_KEY_LABEL = "custos-audit-checkpoint";

/** Prefix of every value `hmac()` returns, so readers of the log know what they are looking at. */
export const HMAC_PREFIX = "hmac-sha256:";

/** The most records one `list` returns (the API and the CLI take the same bound). */
export const AUDIT_LIST_MAX = 9999;

/** What the HSM audit HMAC key is applied to, to derive the chain key: fixed, so every start derives the same key. */
const CHAIN_KEY_LABEL = "custos-audit-chain:v1";

/**
 * What `hmac()` puts before every value. The same HSM key derives the chain key, so
 * a value MACed bare could be the chain label itself, and its HMAC, written to the
 * log, would be the chain key. Every value input starts with this label instead,
 * which differs from the chain label, so no value reaches it; the NUL ends the
 * label (labels hold none), so a later label can't be a prefix of this one.
 */
const VALUE_LABEL = Buffer.from("custos-audit-value:v1\0", "utf8");

export interface AuditLogDeps {
  readonly store: Store;
  readonly keystore: Keystore;
  /** HSM HMAC key for `hmac()`. */
  readonly hmacKey: HsmKeyRef;
  /** HSM ECDSA P-256 key pair that signs checkpoints. */
  readonly checkpointKey: HsmKeyRef;
  /** Checkpoint once the head is this many records past the last checkpoint (default 1000). */
  readonly checkpointEvery?: number | undefined;
  /** Period of the checkpoint timer `start()` sets (default 60000). */
  readonly checkpointIntervalMs?: number | undefined;
  /** Longest `record()` waits for the store before failing with `audit_unavailable` (default 6000). */
  readonly recordTimeoutMs?: number | undefined;
  readonly logger?: Logger | undefined;
}

/**
 * The audit journal service: appends records (through the store's hash chain),
 * HMACs sensitive values with an HSM key, signs checkpoints of the chain head with
 * an HSM key, and verifies the whole journal.
 *
 * Services that change state pass their audit entry to the store operation itself
 * (so the change and its record commit together); `record()` is for actions that
 * change nothing (encrypt, decrypt, denied requests).
 */
export class AuditLog {
  readonly #store: Store;
  readonly #keystore: Keystore;
  readonly #hmacKey: HsmKeyRef;
  readonly #checkpointKey: HsmKeyRef;
  readonly #every: number;
  readonly #intervalMs: number;
  readonly #recordTimeoutMs: number;
  readonly #logger: Logger | undefined;
  readonly #chain: AuditChainKey | undefined;
  #lastCheckpointSeq: number | undefined;
  #anchorLabel: string | undefined;
  #checkpointChain: Promise<unknown> = Promise.resolve();
  #checkpointPending = false;
  #timer: NodeJS.Timeout | undefined;
  #unwatch: (() => void) | undefined;

  /**
   * A journal over a store whose chain is not keyed by this process: `verify`
   * then checks every hash as plain SHA-256. A server uses `open` instead.
   */
  constructor(deps: AuditLogDeps, chain?: AuditChainKey) {
    this.#store = deps.store;
    this.#keystore = deps.keystore;
    this.#hmacKey = deps.hmacKey;
    this.#checkpointKey = deps.checkpointKey;
    this.#every = positive(deps.checkpointEvery ?? 1000, "checkpointEvery");
    this.#intervalMs = positive(deps.checkpointIntervalMs ?? 60_000, "checkpointIntervalMs");
    this.#recordTimeoutMs = positive(deps.recordTimeoutMs ?? 6000, "recordTimeoutMs");
    this.#logger = deps.logger;
    this.#chain = chain;
  }

  /**
   * The journal a server runs: derives the chain key from the HSM (one HMAC call
   * with the audit HMAC key), hands it to the store so every record from now on
   * is keyed (see `AuditChainKey`), and keeps it for `verify`. Call it once at
   * start, before the first audited write. The key stays in memory, in a
   * `KeyObject` that never prints its bytes.
   */
  static async open(deps: AuditLogDeps): Promise<AuditLog> {
    const mac = await deps.keystore.hmac(deps.hmacKey, Buffer.from(CHAIN_KEY_LABEL, "utf8"));
    let key: KeyObject;
    try {
      key = createSecretKey(mac);
    } finally {
      mac.fill(0);
    }
    const keyedFrom = await deps.store.useAuditChainKey(key);
    return new AuditLog(deps, { key, keyedFrom });
  }

  /**
   * The audit keys in the HSM: the HMAC key and the ECDSA P-256 checkpoint key pair,
   * each reused if the token has one (an `init` that died before its store write
   * leaves them behind). `init` calls it once and records both refs.
   */
  static async provisionKeys(keystore: Keystore): Promise<{ hmacKey: HsmKeyRef; checkpointKey: HsmKeyRef }> {
    const hmacKey = await keystore.ensureHmacKey(AUDIT_HMAC_KEY_LABEL);
    const pair = await ensureKeyPair(keystore, "ecdsa-p256", AUDIT_CHECKPOINT_KEY_LABEL);
    return { hmacKey, checkpointKey: pair.ref };
  }

  /**
   * Appends `entry` durably. Any failure, including a store that does not answer
   * within `recordTimeoutMs`, is `audit_unavailable`: an action that can't be
   * audited must not go ahead.
   */
  async record(entry: AuditEntry): Promise<void> {
    let appended: AuditRecord;
    try {
      appended = await withTimeout(this.#store.appendAudit(entry), this.#recordTimeoutMs);
    } catch (e) {
      this.#logger?.error({ err: e, action: entry.action }, "audit: record failed");
      throw new CustosError("audit_unavailable", "the audit journal is unavailable", { cause: e });
    }
    this.#headMoved(appended.seq);
  }

  /** Checkpoints in the background once the head is `checkpointEvery` records past the last checkpoint. */
  #headMoved(headSeq: number): void {
    if (headSeq - (this.#lastCheckpointSeq ?? 0) >= this.#every) this.#checkpointInBackground();
  }

  /**
   * `hmac-sha256:<hex>` of `value` (UTF-8 for strings) under the HSM audit key, as
   * HMAC-SHA256(key, "custos-audit-value:v1" || 0x00 || value): see `VALUE_LABEL`.
   */
  async hmac(value: string | Uint8Array): Promise<string> {
    const bytes = typeof value === "string" ? Buffer.from(value, "utf8") : value;
    const data = Buffer.concat([VALUE_LABEL, bytes]);
    if (typeof value === "string") bytes.fill(0);
    try {
      const mac = await this.#keystore.hmac(this.#hmacKey, data);
      return HMAC_PREFIX + mac.toString("hex");
    } finally {
      data.fill(0);
    }
  }

  /** `invalid_request` for a limit above `AUDIT_LIST_MAX`, rather than fewer records than asked for. */
  async list(query: AuditQuery): Promise<AuditRecord[]> {
    if (query.limit !== undefined && query.limit > AUDIT_LIST_MAX) {
      throw new CustosError("invalid_request", `limit must be at most ${AUDIT_LIST_MAX}`);
    }
    return this.#store.listAudit(query);
  }

  /**
   * Signs the current head (ECDSA P-256 over `auditCheckpointMessage`) with the HSM
   * checkpoint key and stores the checkpoint. `undefined` when the head is already
   * checkpointed. Calls are serialised.
   */
  checkpoint(): Promise<AuditCheckpoint | undefined> {
    const next = this.#checkpointChain.then(
      () => this.#checkpointNow(),
      () => this.#checkpointNow(),
    );
    this.#checkpointChain = next.catch(() => undefined);
    return next;
  }

  /**
   * Starts the periodic checkpoint timer (it does not keep the process alive), and
   * counts towards `checkpointEvery` the records services write with their changes,
   * not only those `record()` appends. Idempotent.
   */
  start(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.#checkpointInBackground(), this.#intervalMs);
    this.#timer.unref();
    this.#unwatch = this.#store.watchAuditHead((headSeq) => this.#headMoved(headSeq));
  }

  /**
   * Stops the timer and signs a last checkpoint, so a clean shutdown leaves no
   * record uncovered by a signature. A failure is logged, not thrown: shutdown goes on.
   */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#unwatch?.();
    this.#unwatch = undefined;
    try {
      await this.checkpoint();
    } catch (e) {
      this.#logger?.warn({ err: e }, "audit: final checkpoint failed");
    }
  }

  /** The newest record's seq (0 for an empty log). */
  async headSeq(): Promise<number> {
    return (await this.#store.auditHead()).seq;
  }

  /**
   * The seq the newest signed checkpoint covers: a gap to the head that keeps growing
   * means checkpoints are failing (the HSM signs them). Read from the store once, then
   * kept as checkpoints are signed.
   */
  async checkpointedSeq(): Promise<number> {
    if (this.#lastCheckpointSeq !== undefined) return this.#lastCheckpointSeq;
    const stored = (await this.#store.listAuditCheckpoints()).at(-1)?.seq ?? 0;
    // A checkpoint signed while the list was read set a newer one: keep it.
    this.#lastCheckpointSeq ??= stored;
    return this.#lastCheckpointSeq;
  }

  /** Walks the whole journal and its checkpoints; see `verifyAuditLog`. */
  verify(): Promise<AuditVerifyReport> {
    return verifyAuditLog(this.#verifyDeps());
  }

  /**
   * Records that this store is a restored backup (see restore.ts), naming the anchor
   * the HSM holds now as superseded, and signs a checkpoint at that record. The anchor
   * itself is left alone: this runs on the copy before it is installed, and an anchor
   * moved to a copy that a crash then never installs would accuse the database still
   * in place. The server moves it at its first checkpoint on the restored store.
   */
  async recordRestore(
    actor: Actor,
    facts: Omit<RestoreDetails, "supersededAnchor">,
  ): Promise<{ seq: number; details: RestoreDetails }> {
    const label = await anchorLabel(this.#store);
    const anchor = label === undefined ? undefined : await readAnchor(this.#keystore, label);
    const anchored = anchor !== undefined && "checkpoint" in anchor ? anchor.checkpoint : undefined;
    const details: RestoreDetails = {
      ...facts,
      supersededAnchor: anchored === undefined ? null : { seq: anchored.seq, hash: anchored.hash, time: anchored.time },
    };
    // Appended directly, not through record(): that may start a background checkpoint, which anchors.
    await this.#store.appendAudit(auditEntry(actor, RESTORE_ACTION, "store", { ...details }));
    const checkpoint = await this.#signHead();
    if (checkpoint === undefined) throw new CustosError("internal", "the restore record was not the head of the log");
    return { seq: checkpoint.seq, details };
  }

  #verifyDeps(): VerifyDeps {
    return { store: this.#store, keystore: this.#keystore, checkpointKey: this.#checkpointKey, chain: this.#chain };
  }

  async #checkpointNow(): Promise<AuditCheckpoint | undefined> {
    const checkpoint = await this.#signHead();
    if (checkpoint !== undefined) await this.#anchor(checkpoint);
    return checkpoint;
  }

  /** Signs the head and stores the checkpoint; undefined when the head is checkpointed already. */
  async #signHead(): Promise<AuditCheckpoint | undefined> {
    const checkpointed = await this.checkpointedSeq();
    const head = await this.#store.auditHead();
    if (head.seq === 0 || head.seq <= checkpointed) return undefined;
    const time = new Date().toISOString();
    const signature = await this.#keystore.sign(
      this.#checkpointKey,
      CHECKPOINT_SCHEME,
      auditCheckpointMessage(head.seq, head.hash, time),
    );
    const checkpoint: AuditCheckpoint = {
      seq: head.seq,
      hash: head.hash,
      time,
      keyLabel: this.#checkpointKey.label,
      keyId: this.#checkpointKey.id,
      scheme: CHECKPOINT_SCHEME,
      signature: signature.toString("base64"),
    };
    await this.#store.addAuditCheckpoint(checkpoint);
    this.#lastCheckpointSeq = head.seq;
    this.#logger?.debug({ seq: head.seq }, "audit: checkpoint");
    return checkpoint;
  }

  /**
   * Makes `checkpoint` the store's anchor in the HSM (see anchor.ts). An anchor the log
   * no longer reaches, or whose record was replaced, is left as it is, so the evidence
   * of the cut outlives later checkpoints, unless a genuine restore record supersedes
   * it (see restore.ts). A failure is logged: the checkpoint stands.
   */
  async #anchor(checkpoint: AuditCheckpoint): Promise<void> {
    try {
      this.#anchorLabel ??= await anchorLabel(this.#store);
      if (this.#anchorLabel === undefined) return;
      const previous = await readAnchor(this.#keystore, this.#anchorLabel);
      if (previous !== undefined && "checkpoint" in previous) {
        const { seq, hash } = previous.checkpoint;
        const [record] = seq <= checkpoint.seq ? await this.#store.readAuditRange(seq, seq) : [];
        if (record?.hash !== hash) {
          const restoreSeq = await restoreSuperseding(this.#verifyDeps(), previous.checkpoint);
          if (restoreSeq === undefined) {
            this.#logger?.warn({ anchoredSeq: seq }, "audit: the log no longer holds the record anchored in the HSM");
            return;
          }
          this.#logger?.info({ anchoredSeq: seq, restoreSeq }, "audit: anchor moved past the restore the log records");
        }
      }
      await writeAnchor(this.#keystore, this.#anchorLabel, checkpoint);
    } catch (e) {
      this.#logger?.warn({ err: e }, "audit: anchoring the checkpoint in the HSM failed");
    }
  }

  #checkpointInBackground(): void {
    if (this.#checkpointPending) return;
    this.#checkpointPending = true;
    this.checkpoint()
      .catch((e: unknown) => this.#logger?.warn({ err: e }, "audit: checkpoint failed"))
      .finally(() => {
        this.#checkpointPending = false;
      });
  }
}

function positive(value: number, name: string): number {
  if (!Number.isFinite(value) || value <= 0) throw new CustosError("invalid_request", `${name} must be positive`);
  return value;
}

/** Rejects with `audit_unavailable` when `promise` has not settled within `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new CustosError("audit_unavailable", "the audit journal did not answer in time")),
      ms,
    );
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
