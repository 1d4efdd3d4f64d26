import { type Actor, auditEntry } from "../audit/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import type { KmsService } from "../kms/index.js";
import { type App, type AppRef, appPath, type Platform } from "../platform/index.js";
import type { Secret } from "../secret/index.js";
import { KeyedSerial } from "../serial/index.js";
import type {
  AuditEntry,
  SecretChange,
  SecretGrantRecord,
  SecretRecord,
  SecretVersionInfo,
  SecretVersionRecord,
  Store,
} from "../store/index.js";
import { alphabetOf, lengthOf, randomString } from "./generate.js";
import { type ListTarget, parseGrantTarget, parseListPrefix, parseSecretPath, type SecretTarget } from "./paths.js";

/** What the secrets service needs of the audit log (the real `AuditLog` satisfies it). */
export interface ValueHmac {
  /** `hmac-sha256:<hex>` of the value under the HSM audit key. */
  hmac(value: Uint8Array): Promise<string>;
}

export interface SecretsOptions {
  readonly store: Store;
  readonly kms: KmsService;
  readonly platform: Platform;
  /**
   * HMACs written values for their audit record, so an auditor can find which write
   * set a value without the journal holding it. Without it records carry no HMAC.
   */
  readonly audit?: ValueHmac | undefined;
  readonly clock?: () => Date;
}

/** A secret as an instance receives it. */
export interface DeliveredSecret {
  /** The whole path: `<org>/<space>/<app>/<name>` or `shared/<name>`. */
  readonly path: string;
  /** Relative to the app (`db/password`), or `shared/<name>` for a shared secret. */
  readonly name: string;
  readonly version: number;
  readonly value: string;
}

/** One version's value as a reader gets it. */
export interface SecretValue {
  readonly path: string;
  readonly version: number;
  readonly value: string;
  readonly createdAt: string;
}

/** What a write answers (never the value). */
export interface WriteResult {
  readonly path: string;
  readonly version: number;
  readonly createdAt: string;
}

/** One page of a listing. */
export interface SecretList {
  /** The prefix listed, ending with `/`. */
  readonly prefix: string;
  /** Names relative to the prefix, in order; a folder's ends with `/`. */
  readonly keys: string[];
  /** Present when more names follow: pass it as `after` for the next page. */
  readonly next?: string;
}

export type VersionState = "live" | "deleted" | "destroyed";

export interface SecretMetadata {
  readonly path: string;
  readonly currentVersion: number;
  readonly maxVersions: number;
  readonly casRequired: boolean;
  readonly customMetadata: Readonly<Record<string, string>>;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly versions: readonly (SecretVersionInfo & { readonly state: VersionState })[];
}

export interface MetadataInput {
  readonly maxVersions?: number;
  readonly casRequired?: boolean;
  readonly customMetadata?: Readonly<Record<string, string>>;
}

export interface GrantView {
  readonly target: string;
  readonly app: string;
  readonly grantedBy: string;
  readonly createdAt: string;
}

/** The key shared secrets are encrypted under, created on first use. */
export const SHARED_KEY = "secrets.shared";
export const MAX_VALUE_BYTES = 32 * 1024;
export const DEFAULT_MAX_VERSIONS = 10;
export const MAX_MAX_VERSIONS = 100;
export const MAX_CUSTOM_METADATA = 16;
const MAX_METADATA_KEY = 128;
const MAX_METADATA_VALUE = 512;
const MAX_VERSIONS_PER_CALL = 100;
/** The most names one `list` answers; `next` says when more follow. */
const LIST_LIMIT = 1000;
/** A listing cursor: a name as listed, a segment or a folder (the segment and `/`). */
const LIST_CURSOR = /^([A-Za-z0-9._-]{1,64})\/?$/;
/**
 * Changes to one secret are serialised in this process, so they never race each
 * other; this bounds the retries against a writer in another process (one server
 * per SQLite file is the rule, so that is a misconfiguration, or a future HA node).
 */
const WRITE_ATTEMPTS = 4;
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

function secretNotFound(path: string): CustosError {
  return new CustosError("not_found", `secret ${path} not found`);
}

/** The encryption context of one version: a ciphertext opens only as that version of that path. */
function contextOf(path: string, version: number): Record<string, string> {
  return { secret: path, version: String(version) };
}

function checkValue(value: unknown): Buffer {
  if (typeof value !== "string") throw invalid("value must be a string");
  if (LONE_SURROGATE.test(value)) throw invalid("value is not valid Unicode");
  const bytes = Buffer.from(value, "utf8");
  if (bytes.length < 1 || bytes.length > MAX_VALUE_BYTES) {
    bytes.fill(0);
    throw invalid(`value must be 1..${MAX_VALUE_BYTES} bytes of UTF-8`);
  }
  return bytes;
}

function checkListCursor(after: unknown): string | undefined {
  if (after === undefined) return undefined;
  const segment = typeof after === "string" ? LIST_CURSOR.exec(after)?.[1] : undefined;
  if (segment === undefined || segment === "." || segment === "..") {
    throw invalid(
      'after must be a name from a listing: a segment of 1..64 of [A-Za-z0-9._-], or a folder ending in "/"',
    );
  }
  return after as string;
}

function checkCas(cas: unknown): number | undefined {
  if (cas === undefined) return undefined;
  if (typeof cas !== "number" || !Number.isInteger(cas) || cas < 0) {
    throw invalid("cas must be a version number (0: the secret must not exist)");
  }
  return cas;
}

function checkVersionList(versions: unknown, required: boolean): number[] | undefined {
  if (versions === undefined) {
    if (required) throw invalid("versions are required");
    return undefined;
  }
  if (
    !Array.isArray(versions) ||
    versions.length === 0 ||
    versions.length > MAX_VERSIONS_PER_CALL ||
    !versions.every((v) => typeof v === "number" && Number.isInteger(v) && v >= 1)
  ) {
    throw invalid(`versions must be 1..${MAX_VERSIONS_PER_CALL} version numbers`);
  }
  return [...new Set(versions as number[])].sort((a, b) => a - b);
}

/** Characters as docs/broker.md and the API schema count them: code points, not UTF-16 units. */
function characters(s: string): number {
  let n = 0;
  for (const _ of s) n += 1;
  return n;
}

function checkMetadata(input: MetadataInput): MetadataInput {
  if (typeof input !== "object" || input === null) throw invalid("metadata settings missing");
  const { maxVersions, casRequired, customMetadata } = input;
  if (
    maxVersions !== undefined &&
    (typeof maxVersions !== "number" ||
      !Number.isInteger(maxVersions) ||
      maxVersions < 1 ||
      maxVersions > MAX_MAX_VERSIONS)
  ) {
    throw invalid(`maxVersions must be an integer from 1 to ${MAX_MAX_VERSIONS}`);
  }
  if (casRequired !== undefined && typeof casRequired !== "boolean") throw invalid("casRequired must be a boolean");
  if (customMetadata !== undefined) {
    if (typeof customMetadata !== "object" || customMetadata === null || Array.isArray(customMetadata)) {
      throw invalid("customMetadata must be an object of strings");
    }
    const entries = Object.entries(customMetadata);
    if (entries.length > MAX_CUSTOM_METADATA) {
      throw invalid(`customMetadata has at most ${MAX_CUSTOM_METADATA} entries`);
    }
    for (const [k, v] of entries) {
      const keyLength = characters(k);
      if (keyLength < 1 || keyLength > MAX_METADATA_KEY || LONE_SURROGATE.test(k)) {
        throw invalid(`customMetadata keys are 1..${MAX_METADATA_KEY} characters`);
      }
      if (typeof v !== "string" || characters(v) > MAX_METADATA_VALUE || LONE_SURROGATE.test(v)) {
        throw invalid(`customMetadata values are strings of at most ${MAX_METADATA_VALUE} characters`);
      }
    }
  }
  return input;
}

function stateOf(v: SecretVersionInfo): VersionState {
  if (v.destroyedAt !== null) return "destroyed";
  if (v.deletedAt !== null) return "deleted";
  return "live";
}

function metadataView(s: SecretRecord): SecretMetadata {
  return {
    path: s.path,
    currentVersion: s.currentVersion,
    maxVersions: s.maxVersions,
    casRequired: s.casRequired,
    customMetadata: s.customMetadata,
    createdAt: s.createdAt,
    updatedAt: s.updatedAt,
    versions: s.versions.map((v) => ({ ...v, state: stateOf(v) })),
  };
}

/** The part of a secret record an audit `before`/`after` shows (never values). */
function auditState(s: Omit<SecretRecord, "versions"> | undefined) {
  if (s === undefined) return null;
  return {
    currentVersion: s.currentVersion,
    maxVersions: s.maxVersions,
    casRequired: s.casRequired,
    customMetadata: s.customMetadata,
  };
}

/**
 * Versioned secrets (docs/broker.md). Values are encrypted through the KMS (the
 * app's key, or `secrets.shared`) with the path and version as encryption context;
 * the store holds only ciphertext. Every change commits with its audit record in
 * one store transaction, and every read of a value is audited (path and version,
 * never the value; a write records the value's HMAC). Authorisation is the
 * caller's (the API): this service trusts its actor.
 */
export class Secrets {
  readonly #store: Store;
  readonly #kms: KmsService;
  readonly #platform: Platform;
  readonly #hmac: ValueHmac | undefined;
  readonly #now: () => Date;
  #sharedKeyReady = false;
  /**
   * Changes to one secret, one at a time, by path. Each reads the secret, then
   * writes it expecting that revision: run side by side, all but one would find it
   * stale, and a write without cas would answer `conflict`, which is only for a
   * failed check-and-set.
   */
  readonly #changes = new KeyedSerial();

  constructor(options: SecretsOptions) {
    this.#store = options.store;
    this.#kms = options.kms;
    this.#platform = options.platform;
    this.#hmac = options.audit;
    this.#now = options.clock ?? (() => new Date());
  }

  // ---- writing ----------------------------------------------------------------

  /** A new version with `value`; `cas`: the current version must be this (0: must not exist) else `conflict`. */
  async put(actor: Actor, path: unknown, value: unknown, cas?: unknown): Promise<WriteResult> {
    const target = parseSecretPath(path);
    const expected = checkCas(cas);
    const bytes = checkValue(value);
    try {
      return await this.#writeVersion(actor, target, bytes, expected, {});
    } finally {
      bytes.fill(0);
    }
  }

  /** A new version with a random value (the value is not returned: read it). */
  async generate(
    actor: Actor,
    path: unknown,
    input: { length?: unknown; alphabet?: unknown; cas?: unknown } = {},
  ): Promise<WriteResult> {
    const target = parseSecretPath(path);
    const expected = checkCas(input.cas);
    const length = lengthOf(input.length);
    const alphabet = alphabetOf(input.alphabet);
    const bytes = Buffer.from(randomString(length, alphabet), "utf8");
    if (bytes.length > MAX_VALUE_BYTES) {
      bytes.fill(0);
      throw invalid(`the generated value would exceed ${MAX_VALUE_BYTES} bytes`);
    }
    const named = typeof input.alphabet === "string" && input.alphabet.length <= 16 ? input.alphabet : "custom";
    try {
      return await this.#writeVersion(actor, target, bytes, expected, {
        generated: { length, alphabet: input.alphabet === undefined ? "alnum" : named },
      });
    } finally {
      bytes.fill(0);
    }
  }

  /**
   * The `valueHmac` a write of `value` records: the same checks and the same UTF-8
   * bytes, so an auditor can find the write that set a value they know. Not
   * audited here (the caller records the request, never the value).
   */
  async valueHmac(value: unknown): Promise<string> {
    if (this.#hmac === undefined) {
      throw new CustosError("audit_unavailable", "values are not HMACed: this service has no audit log");
    }
    const bytes = checkValue(value);
    try {
      return await this.#hmac.hmac(bytes);
    } finally {
      bytes.fill(0);
    }
  }

  async #writeVersion(
    actor: Actor,
    target: SecretTarget,
    bytes: Buffer,
    cas: number | undefined,
    details: Record<string, unknown>,
  ): Promise<WriteResult> {
    const { keyName, appId } = await this.#keyFor(target, true);
    // One HSM call per write (writes are rare): the record can then say which value was set.
    const valueHmac = await this.#hmac?.hmac(bytes);
    return this.#changes.run(target.path, async () => {
      for (let attempt = 1; ; attempt++) {
        const current = await this.#store.secrets.getSecret(target.path);
        if (current?.casRequired && cas === undefined) {
          throw invalid(`secret ${target.path} requires check-and-set: give cas`);
        }
        const currentVersion = current?.currentVersion ?? 0;
        if (cas !== undefined && cas !== currentVersion) {
          throw new CustosError(
            "conflict",
            `check-and-set failed: the current version of ${target.path} is ${currentVersion}, not ${cas}`,
          );
        }
        const version = currentVersion + 1;
        const ciphertext = await this.#seal(target, keyName, bytes, version);
        const now = this.#now().toISOString();
        const maxVersions = current?.maxVersions ?? DEFAULT_MAX_VERSIONS;
        const prune = pruned(current?.versions ?? [], maxVersions - 1);
        const secret = {
          path: target.path,
          appId,
          currentVersion: version,
          maxVersions,
          casRequired: current?.casRequired ?? false,
          customMetadata: current?.customMetadata ?? {},
          createdAt: current?.createdAt ?? now,
          updatedAt: now,
          revision: (current?.revision ?? 0) + 1,
        };
        const change: SecretChange = {
          secret,
          expectedRevision: current?.revision ?? null,
          addVersion: {
            path: target.path,
            version,
            createdAt: now,
            deletedAt: null,
            destroyedAt: null,
            ciphertext,
          },
          ...(prune.length > 0 ? { pruneVersions: prune } : {}),
        };
        const entry = auditEntry(actor, "secret.write", `secret/${target.path}`, {
          path: target.path,
          version,
          ...(cas === undefined ? {} : { cas }),
          ...(valueHmac === undefined ? {} : { valueHmac }),
          ...details,
          ...(prune.length > 0 ? { destroyedVersions: prune } : {}),
        });
        try {
          await this.#store.secrets.changeSecret(change, entry);
          return { path: target.path, version, createdAt: now };
        } catch (e) {
          // A lost race: with cas the caller's expectation is now stale (the next read
          // answers that); without it, write on top of the winner.
          if (!isCustosError(e, "conflict") || attempt >= WRITE_ATTEMPTS) throw e;
        }
      }
    });
  }

  // ---- reading ----------------------------------------------------------------

  /** The latest (or the given) version's value; `not_found` for a deleted or destroyed version. Audited. */
  async read(actor: Actor, path: unknown, version?: unknown): Promise<SecretValue> {
    const target = parseSecretPath(path);
    if (version !== undefined && (typeof version !== "number" || !Number.isInteger(version) || version < 1)) {
      throw invalid("version must be a positive integer");
    }
    const { keyName } = await this.#keyFor(target, false);
    const secret = await this.#store.secrets.getSecret(target.path);
    if (secret === undefined || secret.currentVersion === 0) throw secretNotFound(target.path);
    const n = (version as number | undefined) ?? secret.currentVersion;
    const record = await this.#store.secrets.getSecretVersion(target.path, n);
    const live = this.#liveOrThrow(target.path, n, record);
    const value = await this.#open(target, keyName, live.ciphertext, n);
    await this.#audit(auditEntry(actor, "secret.read", `secret/${target.path}`, { path: target.path, version: n }));
    return { path: target.path, version: n, value, createdAt: live.createdAt };
  }

  #liveOrThrow(
    path: string,
    n: number,
    record: SecretVersionRecord | undefined,
  ): SecretVersionRecord & { ciphertext: string } {
    if (record === undefined) throw new CustosError("not_found", `version ${n} of ${path} not found`);
    if (record.destroyedAt !== null || record.ciphertext === null) {
      throw new CustosError("not_found", `version ${n} of ${path} is destroyed`);
    }
    if (record.deletedAt !== null) throw new CustosError("not_found", `version ${n} of ${path} is deleted`);
    return record as SecretVersionRecord & { ciphertext: string };
  }

  /** Metadata: versions and their states, current version, settings. Not a read of any value. */
  async metadata(path: unknown): Promise<SecretMetadata> {
    const target = parseSecretPath(path);
    await this.#appOf(target);
    const secret = await this.#store.secrets.getSecret(target.path);
    if (secret === undefined) throw secretNotFound(target.path);
    return metadataView(secret);
  }

  /**
   * Names under an app or folder, relative to the prefix, in order; a folder's name
   * ends with `/`. At most `LIST_LIMIT` of them, those after `after` (a name as
   * listed); when more follow, `next` is the cursor to pass as `after`.
   */
  async list(prefix: unknown, after?: unknown): Promise<SecretList> {
    const target: ListTarget = parseListPrefix(prefix);
    const cursor = checkListCursor(after);
    if (target.kind === "app") await this.#platform.getApp(target.app);
    // One name more than a page: whether another page follows, without a second query.
    const keys = await this.#store.secrets.listSecretNames(target.prefix, LIST_LIMIT + 1, cursor);
    if (keys.length <= LIST_LIMIT) return { prefix: target.prefix, keys };
    keys.length = LIST_LIMIT;
    return { prefix: target.prefix, keys, next: keys.at(-1) as string };
  }

  // ---- metadata and versions --------------------------------------------------

  /** Updates maxVersions (lowering it destroys the oldest versions beyond it), casRequired, customMetadata. */
  async updateMetadata(actor: Actor, path: unknown, input: MetadataInput): Promise<SecretMetadata> {
    const target = parseSecretPath(path);
    const changes = checkMetadata(input);
    const { appId } = await this.#keyFor(target, false);
    return this.#mutate(actor, target, "secret.metadata.update", (current, now) => {
      const maxVersions = changes.maxVersions ?? current?.maxVersions ?? DEFAULT_MAX_VERSIONS;
      const prune = pruned(current?.versions ?? [], maxVersions);
      return {
        secret: {
          path: target.path,
          appId,
          currentVersion: current?.currentVersion ?? 0,
          maxVersions,
          casRequired: changes.casRequired ?? current?.casRequired ?? false,
          customMetadata: changes.customMetadata ?? current?.customMetadata ?? {},
          createdAt: current?.createdAt ?? now,
          updatedAt: now,
          revision: (current?.revision ?? 0) + 1,
        },
        expectedRevision: current?.revision ?? null,
        ...(prune.length > 0 ? { pruneVersions: prune } : {}),
        details: prune.length > 0 ? { destroyedVersions: prune } : {},
      };
    });
  }

  /** Soft-deletes the latest version, or the versions named. */
  async deleteVersions(actor: Actor, path: unknown, versions?: unknown): Promise<SecretMetadata> {
    const target = parseSecretPath(path);
    const named = checkVersionList(versions, false);
    await this.#appOf(target);
    return this.#mutate(actor, target, "secret.delete", (current, now) => {
      const existing = requireSecret(target.path, current);
      const wanted = named ?? [existing.currentVersion];
      const affected = versionsIn(target.path, existing, wanted).filter((v) => stateOf(v) === "live");
      return {
        ...touch(existing, now),
        deleteVersions: { versions: affected.map((v) => v.version), at: now },
        details: { versions: wanted, deleted: affected.map((v) => v.version) },
      };
    });
  }

  /** Undeletes soft-deleted versions (a destroyed version stays destroyed). */
  async undeleteVersions(actor: Actor, path: unknown, versions: unknown): Promise<SecretMetadata> {
    const target = parseSecretPath(path);
    const named = checkVersionList(versions, true) as number[];
    await this.#appOf(target);
    return this.#mutate(actor, target, "secret.undelete", (current, now) => {
      const existing = requireSecret(target.path, current);
      const affected = versionsIn(target.path, existing, named).filter((v) => stateOf(v) === "deleted");
      return {
        ...touch(existing, now),
        undeleteVersions: affected.map((v) => v.version),
        details: { versions: named, undeleted: affected.map((v) => v.version) },
      };
    });
  }

  /** Destroys versions: their ciphertext is erased for good. */
  async destroyVersions(actor: Actor, path: unknown, versions: unknown): Promise<SecretMetadata> {
    const target = parseSecretPath(path);
    const named = checkVersionList(versions, true) as number[];
    await this.#appOf(target);
    return this.#mutate(actor, target, "secret.destroy", (current, now) => {
      const existing = requireSecret(target.path, current);
      const affected = versionsIn(target.path, existing, named).filter((v) => stateOf(v) !== "destroyed");
      return {
        ...touch(existing, now),
        destroyVersions: { versions: affected.map((v) => v.version), at: now },
        details: { versions: named, destroyed: affected.map((v) => v.version) },
      };
    });
  }

  /** The secret and all its versions, for good. */
  async deleteAll(actor: Actor, path: unknown): Promise<void> {
    const target = parseSecretPath(path);
    await this.#appOf(target);
    await this.#changes.run(target.path, async () => {
      for (let attempt = 1; ; attempt++) {
        const current = await this.#store.secrets.getSecret(target.path);
        if (current === undefined) throw secretNotFound(target.path);
        const entry = auditEntry(actor, "secret.metadata.delete", `secret/${target.path}`, {
          path: target.path,
          versions: current.versions.map((v) => v.version),
          before: auditState(current),
        });
        try {
          await this.#store.secrets.deleteSecret(target.path, current.revision, entry);
          return;
        } catch (e) {
          if (!isCustosError(e, "conflict") || attempt >= WRITE_ATTEMPTS) throw e;
        }
      }
    });
  }

  async #mutate(
    actor: Actor,
    target: SecretTarget,
    action: string,
    plan: (current: SecretRecord | undefined, now: string) => SecretChange & { details: Record<string, unknown> },
  ): Promise<SecretMetadata> {
    return this.#changes.run(target.path, async () => {
      for (let attempt = 1; ; attempt++) {
        const current = await this.#store.secrets.getSecret(target.path);
        const { details, ...change } = plan(current, this.#now().toISOString());
        const entry = auditEntry(actor, action, `secret/${target.path}`, {
          path: target.path,
          ...details,
          before: auditState(current),
          after: auditState(change.secret),
        });
        try {
          await this.#store.secrets.changeSecret(change, entry);
        } catch (e) {
          if (!isCustosError(e, "conflict") || attempt >= WRITE_ATTEMPTS) throw e;
          continue;
        }
        const after = await this.#store.secrets.getSecret(target.path);
        if (after === undefined) throw secretNotFound(target.path);
        return metadataView(after);
      }
    });
  }

  // ---- shared secrets and grants ----------------------------------------------

  /** Grants a shared secret (or a `shared/<folder>/`) to apps; existing grants stay. */
  async grant(actor: Actor, target: unknown, apps: unknown): Promise<GrantView[]> {
    const t = parseGrantTarget(target);
    if (!Array.isArray(apps) || apps.length === 0 || apps.length > 100) {
      throw invalid("apps must be 1..100 apps written <org>/<space>/<app>");
    }
    const resolved: App[] = [];
    for (const a of new Set(apps)) {
      const parts = typeof a === "string" ? a.split("/") : [];
      if (parts.length !== 3) throw invalid("an app is written <org>/<space>/<app>");
      resolved.push(await this.#platform.getApp({ org: parts[0], space: parts[1], app: parts[2] } as AppRef));
    }
    const now = this.#now().toISOString();
    const grants: SecretGrantRecord[] = resolved.map((app) => ({
      target: t,
      appId: app.id,
      grantedBy: actor.principal,
      createdAt: now,
    }));
    const stored = await this.#store.secrets.putGrants(
      grants,
      auditEntry(actor, "secret.grant", `secret/${t}`, { target: t, apps: resolved.map(appPath) }),
    );
    // A grant that existed keeps its first grantor and time, and is answered so.
    return resolved.map((app, i) => {
      const g = stored[i] as SecretGrantRecord;
      return { target: t, app: appPath(app), grantedBy: g.grantedBy, createdAt: g.createdAt };
    });
  }

  async listGrants(): Promise<GrantView[]> {
    const grants = await this.#store.secrets.listGrants();
    const out: GrantView[] = [];
    for (const g of grants) {
      const app = await this.#platform.appById(g.appId);
      if (app !== undefined) {
        out.push({ target: g.target, app: appPath(app), grantedBy: g.grantedBy, createdAt: g.createdAt });
      }
    }
    return out;
  }

  // ---- for running instances (the broker) -------------------------------------

  /**
   * The latest live version of every secret the app may read: its own and the
   * shared ones granted to it, decrypted. Not audited here: the broker records the
   * delivery. A destroyed app key answers `key_destroyed`.
   */
  async forApp(app: App): Promise<DeliveredSecret[]> {
    const versions = await this.#store.secrets.liveVersionsForApp(app.id);
    const own = `${appPath(app)}/`;
    // Its own secrets are under the app's key, granted ones under the shared key: one
    // KMS call per key, so the key and its versions are read once, not once a secret.
    type Item = { at: number; target: SecretTarget; ciphertext: string; context: Record<string, string> };
    const byKey = new Map<string, Item[]>();
    for (const [at, v] of versions.entries()) {
      const target = parseSecretPath(v.path);
      const keyName = target.kind === "app" ? app.keyName : SHARED_KEY;
      const group = byKey.get(keyName) ?? [];
      group.push({ at, target, ciphertext: v.ciphertext as string, context: contextOf(target.path, v.version) });
      byKey.set(keyName, group);
    }
    const values = new Array<string>(versions.length);
    for (const [keyName, group] of byKey) {
      let plaintexts: Secret[];
      try {
        plaintexts = await this.#kms.openManyFor(keyName, group);
      } catch (e) {
        throw this.#destroyedKey((group[0] as Item).target, e);
      }
      try {
        for (const [i, plaintext] of plaintexts.entries()) {
          values[(group[i] as Item).at] = plaintext.use((b) => b.toString("utf8"));
        }
      } finally {
        for (const plaintext of plaintexts) plaintext.destroy();
      }
    }
    return versions.map((v, i) => ({
      path: v.path,
      name: this.#deliveredName(v.path, own),
      version: v.version,
      value: values[i] as string,
    }));
  }

  /**
   * One secret for an instance of `app`: the latest live version. `forbidden` unless
   * the path is the app's own or a shared secret granted to it. Not audited here:
   * the broker records the read and the refusal.
   */
  async readForApp(app: App, path: string): Promise<DeliveredSecret> {
    const target = parseSecretPath(path);
    const own = `${appPath(app)}/`;
    if (target.kind === "app" ? !target.path.startsWith(own) : !(await this.#store.secrets.isGranted(app.id, path))) {
      throw new CustosError(
        "forbidden",
        `app ${appPath(app)} may read only its own secrets and the shared ones granted to it, not ${target.path}`,
      );
    }
    const secret = await this.#store.secrets.getSecret(target.path);
    const latest = secret?.versions.filter((v) => stateOf(v) === "live").at(-1);
    if (latest === undefined) throw secretNotFound(target.path);
    const record = this.#liveOrThrow(
      target.path,
      latest.version,
      await this.#store.secrets.getSecretVersion(target.path, latest.version),
    );
    const keyName = target.kind === "app" ? app.keyName : SHARED_KEY;
    const value = await this.#open(target, keyName, record.ciphertext, latest.version);
    return { path: target.path, name: this.#deliveredName(target.path, own), version: latest.version, value };
  }

  #deliveredName(path: string, own: string): string {
    return path.startsWith(own) ? path.slice(own.length) : path;
  }

  // ---- keys and crypto --------------------------------------------------------

  /** The app of an app secret (`not_found` when it doesn't exist). */
  async #appOf(target: SecretTarget): Promise<App | undefined> {
    return target.kind === "app" ? this.#platform.getApp(target.app) : undefined;
  }

  /** The key and owning app id of a target; the shared key is created on first write. */
  async #keyFor(target: SecretTarget, forWriting: boolean): Promise<{ keyName: string; appId: string | null }> {
    if (target.kind === "app") {
      const app = await this.#platform.getApp(target.app);
      return { keyName: app.keyName, appId: app.id };
    }
    if (forWriting) await this.#ensureSharedKey();
    return { keyName: SHARED_KEY, appId: null };
  }

  async #ensureSharedKey(): Promise<void> {
    if (this.#sharedKeyReady) return;
    try {
      await this.#kms.createKey(
        { principal: "system", requestId: "secrets-shared-key", source: "local" },
        { name: SHARED_KEY, purpose: "encrypt", algorithm: "aes-256-gcm", description: "shared secrets" },
      );
    } catch (e) {
      if (!isCustosError(e, "conflict")) throw e;
    }
    this.#sharedKeyReady = true;
  }

  async #seal(target: SecretTarget, keyName: string, bytes: Buffer, version: number): Promise<string> {
    try {
      return await this.#kms.sealFor(keyName, bytes, contextOf(target.path, version));
    } catch (e) {
      throw this.#destroyedKey(target, e);
    }
  }

  async #open(target: SecretTarget, keyName: string, ciphertext: string, version: number): Promise<string> {
    let plaintext: Awaited<ReturnType<KmsService["openFor"]>>;
    try {
      plaintext = await this.#kms.openFor(keyName, ciphertext, contextOf(target.path, version));
    } catch (e) {
      throw this.#destroyedKey(target, e);
    }
    try {
      return plaintext.use((b) => b.toString("utf8"));
    } finally {
      plaintext.destroy();
    }
  }

  /** A destroyed key's error, said in the secret's terms. */
  #destroyedKey(target: SecretTarget, e: unknown): unknown {
    if (!isCustosError(e, "key_destroyed")) return e;
    const whose = target.kind === "app" ? `app ${appPath(target.app)}` : "shared secrets";
    const message =
      target.kind === "app"
        ? `the key of ${whose} was destroyed; its secrets are unrecoverable`
        : `the key of ${whose} was destroyed; they are unrecoverable`;
    return new CustosError("key_destroyed", message, { cause: e });
  }

  async #audit(entry: AuditEntry): Promise<void> {
    try {
      await this.#store.appendAudit(entry);
    } catch (e) {
      throw new CustosError("audit_unavailable", "the audit journal is unavailable", { cause: e });
    }
  }
}

/** The oldest recorded versions to remove so that at most `keep` remain. */
function pruned(versions: readonly SecretVersionInfo[], keep: number): number[] {
  const excess = versions.length - keep;
  return excess > 0 ? versions.slice(0, excess).map((v) => v.version) : [];
}

function requireSecret(path: string, current: SecretRecord | undefined): SecretRecord {
  if (current === undefined) throw secretNotFound(path);
  return current;
}

/** The recorded versions named; `not_found` for one that never existed or was pruned. */
function versionsIn(path: string, secret: SecretRecord, wanted: readonly number[]): SecretVersionInfo[] {
  return wanted.map((n) => {
    const v = secret.versions.find((x) => x.version === n);
    if (v === undefined) throw new CustosError("not_found", `version ${n} of ${path} not found`);
    return v;
  });
}

/** A change that only bumps the revision (versions change beside it). */
function touch(s: SecretRecord, now: string): SecretChange {
  const { versions: _versions, ...rest } = s;
  return { secret: { ...rest, updatedAt: now, revision: s.revision + 1 }, expectedRevision: s.revision };
}
