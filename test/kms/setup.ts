import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Actor, AuditLog } from "../../src/audit/index.js";
import { CustosError } from "../../src/errors/index.js";
import { Pkcs11Keystore } from "../../src/hsm/pkcs11/index.js";
import { KmsService } from "../../src/kms/index.js";
import { Secret } from "../../src/secret/index.js";
import { type AuditEntry, type AuditRecord, SqliteStore } from "../../src/store/index.js";
import { createTestToken, type TestToken } from "../helpers/softhsm.js";

/**
 * The real AuditLog behind a switch: when `failing` is set, `record` answers
 * `audit_unavailable` the way the AuditLog does when its store can't take the write.
 * Everything else goes to the real journal.
 */
export class SwitchableAudit {
  failing = false;
  constructor(readonly log: AuditLog) {}
  async record(entry: AuditEntry): Promise<void> {
    if (this.failing) throw new CustosError("audit_unavailable", "the audit journal is unavailable");
    await this.log.record(entry);
  }
}

/** A real SoftHSM token with a root key, a real SQLite store and the real audit log. */
export interface KmsFixture {
  readonly token: TestToken;
  readonly keystore: Pkcs11Keystore;
  readonly store: SqliteStore;
  readonly dbPath: string;
  readonly audit: SwitchableAudit;
  /** The service's clock; tests move it. */
  now: Date;
  readonly kms: KmsService;
  /** Audit records for `action`, newest last. */
  records(action?: string): Promise<AuditRecord[]>;
  close(): Promise<void>;
}

export const alice: Actor = { principal: "user:alice", requestId: "req-alice", source: "127.0.0.1" };

export async function openFixture(prefix: string): Promise<KmsFixture> {
  const token = createTestToken(prefix);
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
  const keystore = await Pkcs11Keystore.open({
    modulePath: token.modulePath,
    tokenLabel: token.label,
    pin: Secret.fromString(token.pin),
  });
  await keystore.createRootKey();
  const dbPath = join(dir, "custos.db");
  const store = await SqliteStore.open(dbPath);
  const log = new AuditLog({ store, keystore, ...(await AuditLog.provisionKeys(keystore)) });
  const audit = new SwitchableAudit(log);
  const fixture: KmsFixture = {
    token,
    keystore,
    store,
    dbPath,
    audit,
    now: new Date("2030-01-01T00:00:00.000Z"),
    kms: undefined as unknown as KmsService,
    async records(action) {
      const all = await store.listAudit({ limit: 1000, descending: true, ...(action ? { action } : {}) });
      return all.reverse();
    },
    async close() {
      await log.stop();
      await store.close();
      await keystore.close();
      token.remove();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  (fixture as { kms: KmsService }).kms = new KmsService({
    keystore,
    store,
    audit,
    clock: () => fixture.now,
    minDestructionWaitSeconds: 0,
  });
  return fixture;
}

/** Asserts that a promise rejects with a CustosError of `code`. */
export async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof CustosError)) throw new Error(`expected CustosError ${code}, got ${String(e)}`);
    if (e.code !== code) throw new Error(`expected ${code}, got ${e.code}: ${e.message}`);
    if (message && !message.test(e.message)) throw new Error(`message ${JSON.stringify(e.message)} !~ ${message}`);
    return;
  }
  throw new Error(`expected ${code}, but it resolved`);
}
