import { randomBytes } from "node:crypto";
import { type Actor, auditEntry, markAudited } from "../audit/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import { ensureKeyPair, type HsmKeyRef, type Keystore, type SignatureScheme } from "../hsm/index.js";
import type {
  KrlMaker,
  SshCaAlgorithm,
  SshCaKind,
  SshCaRecord,
  SshCertificateRecord,
  SshRoleRecord,
  Store,
  SudoInstance,
} from "../store/index.js";
import { certificateBlob, certificateLine, certificateTbs } from "./certificate.js";
import { authorizedKeyLine, parsePublicKeyLine, type SubjectKey, sshPublicKeyFromSpki } from "./keys.js";
import { buildKrl } from "./krl.js";
import {
  BUILTIN_ROLES,
  checkHostPrincipal,
  checkPrincipalText,
  checkReason,
  checkSubjectKey,
  criticalOptionsFor,
  extensionsFor,
  isPrincipalTemplate,
  literalAdmits,
  type RoleSpec,
  roleFromRecord,
  type SshRole,
  ttlFor,
  validateRoleSpec,
} from "./role.js";
import { type GrantSudoInput, newSudoGrant, type SudoGrantView, subjectNames, sudoGrantView } from "./sudo.js";

export interface SshCaOptions {
  readonly keystore: Keystore;
  readonly store: Store;
  /** Algorithm of new CA keys. */
  readonly caAlgorithm: SshCaAlgorithm;
  /** The hosts the `@cert-authority` line covers. */
  readonly knownHostsPattern: string;
  readonly clock?: () => Date;
}

/** Who asks for a certificate, as the service needs to know them. */
export interface Requester {
  /** How audit records name them (`user:alice`, `token:<id>`); also what the broker records as an instance's registrar. */
  readonly display: string;
  /** The user they act for; null for a standalone token (no user-derived principals). */
  readonly userId: string | null;
  /**
   * Whether they carry the user's ownership rights: the instances the user owns or
   * holds SSH sudo grants on. False for a token scoped to its own policies, which
   * acts only through them (`Principal.scoped`).
   */
  readonly ownerRights: boolean;
}

export interface SignInput {
  readonly role: string;
  readonly publicKey: string;
  readonly principals?: readonly string[];
  readonly ttlSeconds?: number;
  readonly extensions?: readonly string[];
  readonly criticalOptions?: Readonly<Record<string, unknown>>;
}

export interface SignedCertificate {
  readonly certificate: string;
  readonly serial: string;
  readonly keyId: string;
  readonly certType: SshCaKind;
  readonly caId: string;
  readonly principals: readonly string[];
  readonly validAfter: string;
  readonly validBefore: string;
  readonly extensions: readonly string[];
  readonly criticalOptions: Readonly<Record<string, string>>;
  readonly fingerprint: string;
}

export interface CertificateView {
  readonly serial: string;
  readonly keyId: string;
  readonly certType: SshCaKind;
  readonly caId: string;
  readonly principals: readonly string[];
  readonly validAfter: string;
  readonly validBefore: string;
  readonly fingerprint: string;
  readonly role: string;
  readonly requester: string;
  readonly issuedAt: string;
  readonly sudoGrantId: string | null;
  readonly status: "valid" | "revoked" | "expired";
  readonly revokedAt: string | null;
  readonly revocationReason: string | null;
}

export interface CaKeyView {
  readonly id: string;
  readonly algorithm: SshCaAlgorithm;
  /** An authorized_keys line. */
  readonly publicKey: string;
}

export interface CaKeys {
  readonly user: readonly CaKeyView[];
  readonly host: readonly CaKeyView[];
  /** An sshd `TrustedUserCAKeys` file. */
  readonly trustedUserCaKeys: string;
  /** `@cert-authority` known_hosts lines. */
  readonly knownHosts: string;
}

export interface Revoked {
  readonly revoked: readonly string[];
  readonly fingerprint?: string;
  readonly krlVersion: number;
}

/** `validAfter` lies this far in the past, for hosts whose clocks run behind (Vault's not_before_duration). */
const CLOCK_SKEW_MS = 30_000;
/** OpenSSH reads at most this many principals in a certificate (SSHKEY_CERT_MAX_PRINCIPALS) and refuses the rest. */
const MAX_CERTIFICATE_PRINCIPALS = 256;
const SERIAL_RE = /^[1-9][0-9]{0,19}$/;
const MAX_UINT64 = (1n << 64n) - 1n;

interface LoadedCa {
  readonly record: SshCaRecord;
  readonly ref: HsmKeyRef;
  readonly scheme: SignatureScheme;
}

/** What a role yields for one requester: exact principals (with the sudo grant behind each privileged one) and patterns. */
interface Allowed {
  readonly exact: Map<string, SudoInstance | null>;
  readonly patterns: readonly string[];
}

const SCHEMES: Readonly<Record<SshCaAlgorithm, SignatureScheme>> = {
  "ecdsa-p256": "ecdsa-p256-sha256",
  ed25519: "ed25519",
};

/**
 * The SSH certificate authority: a user CA and a host CA whose keys are HSM token
 * objects, roles, certificates built here (PROTOCOL.certkeys) and signed in the
 * HSM, revocation into a KRL regenerated in the revoking transaction, and sudo
 * grants. CAs and roles are cached and reloaded after every change this process
 * makes (one process serves one store, as everywhere in Custos for now).
 */
export class SshCa {
  readonly #o: SshCaOptions;
  readonly #now: () => Date;
  #cas: LoadedCa[] = [];
  #roles = new Map<string, SshRole>();

  constructor(options: SshCaOptions) {
    this.#o = options;
    this.#now = options.clock ?? (() => new Date());
  }

  /**
   * Loads the CAs and roles, creating the CA keys (HSM), the built-in roles and the
   * first KRL when the store has none. Idempotent and crash-safe: keys a dead
   * attempt made are found by label; the store write is one transaction.
   */
  async ensure(actor: Actor): Promise<void> {
    const existing = await this.#o.store.ssh.listCas();
    if (existing.length === 0) {
      const algorithm = this.#o.caAlgorithm;
      const now = this.#now().toISOString();
      const cas: SshCaRecord[] = [];
      for (const kind of ["user", "host"] as const) {
        const pair = await ensureKeyPair(this.#o.keystore, algorithm, `custos-ssh-${kind}-1`);
        cas.push({
          id: `${kind}-1`,
          kind,
          algorithm,
          hsmLabel: pair.ref.label,
          hsmId: pair.ref.id,
          publicKey: sshPublicKeyFromSpki(pair.publicKey),
          state: "active",
          createdAt: now,
        });
      }
      const roles = Object.entries(BUILTIN_ROLES).map(([name, spec]) => roleRecord(name, spec, true, now, 1));
      await this.#o.store.ssh.initialize(
        cas,
        roles,
        this.#krlMaker(),
        auditEntry(actor, "ssh.init", "ssh/ca", {
          cas: cas.map((c) => ({ id: c.id, algorithm: c.algorithm, hsmLabel: c.hsmLabel })),
          roles: roles.map((r) => r.name),
        }),
      );
    }
    await this.#load();
  }

  async #load(): Promise<void> {
    this.#cas = (await this.#o.store.ssh.listCas()).map((record) => ({
      record,
      ref: { label: record.hsmLabel, id: record.hsmId },
      scheme: SCHEMES[record.algorithm],
    }));
    this.#roles = new Map((await this.#o.store.ssh.listRoles()).map((r) => [r.name, roleFromRecord(r)]));
  }

  #activeCa(kind: SshCaKind): LoadedCa {
    const ca = this.#cas.find((c) => c.record.kind === kind && c.record.state === "active");
    if (ca === undefined) throw new CustosError("not_initialized", "the SSH CA is not initialised");
    return ca;
  }

  #krlMaker(): KrlMaker {
    return (state) =>
      buildKrl({
        version: BigInt(state.version),
        generatedAt: this.#now(),
        comment: "custos",
        cas: state.cas.map((ca) => ({ caKey: ca.publicKey, serials: ca.serials.map(BigInt) })),
        fingerprints: state.fingerprints,
      });
  }

  // ---- CA keys and the KRL (public) ----------------------------------------------

  caKeys(): CaKeys {
    const view = (kind: SshCaKind): CaKeyView[] =>
      this.#cas
        .filter((c) => c.record.kind === kind)
        .map((c) => ({
          id: c.record.id,
          algorithm: c.record.algorithm,
          publicKey: authorizedKeyLine(c.record.publicKey, `custos-ssh-${c.record.id}`),
        }));
    if (this.#cas.length === 0) throw new CustosError("not_initialized", "the SSH CA is not initialised");
    const user = view("user");
    const host = view("host");
    return {
      user,
      host,
      trustedUserCaKeys: user.map((k) => `${k.publicKey}\n`).join(""),
      knownHosts: host.map((k) => `@cert-authority ${this.#o.knownHostsPattern} ${k.publicKey}\n`).join(""),
    };
  }

  async krl(): Promise<{ version: number; generatedAt: string; krl: Buffer }> {
    const krl = await this.#o.store.ssh.getKrl();
    if (krl === undefined) throw new CustosError("not_initialized", "the SSH CA is not initialised");
    return krl;
  }

  // ---- roles -----------------------------------------------------------------------

  /** The role, or `not_found`. */
  role(name: string): SshRole {
    const role = this.#roles.get(name);
    if (role === undefined) throw new CustosError("not_found", `no SSH role ${name.slice(0, 64)}`);
    return role;
  }

  roles(): SshRole[] {
    return [...this.#roles.values()];
  }

  async putRole(actor: Actor, name: string, input: unknown): Promise<SshRole> {
    checkRoleName(name);
    const spec = validateRoleSpec(input);
    const current = this.#roles.get(name);
    const now = this.#now().toISOString();
    const record = roleRecord(
      name,
      spec,
      current?.builtin ?? false,
      now,
      (current?.revision ?? 0) + 1,
      current?.createdAt,
    );
    await this.#o.store.ssh.putRole(
      record,
      current?.revision ?? null,
      auditEntry(actor, "ssh.role.put", `ssh/role/${name}`, { before: current ?? null, after: record.spec }),
    );
    await this.#load();
    return this.role(name);
  }

  async deleteRole(actor: Actor, name: string): Promise<void> {
    const current = this.role(name);
    await this.#o.store.ssh.deleteRole(
      name,
      auditEntry(actor, "ssh.role.delete", `ssh/role/${name}`, { before: current }),
    );
    await this.#load();
  }

  // ---- signing ---------------------------------------------------------------------

  /**
   * Signs a certificate for `input.publicKey` under the role. A request outside the
   * role signs nothing and is audited here as denied (the error is marked audited);
   * a signed certificate is recorded with its audit entry in one transaction.
   * Authorisation to use a role that is not self-service is the caller's (the API).
   */
  async sign(actor: Actor, requester: Requester, input: SignInput): Promise<SignedCertificate> {
    const role = this.role(input.role);
    const details: Record<string, unknown> = { role: role.name, requested: input.principals ?? null };
    try {
      const key = parsePublicKeyLine(input.publicKey);
      details.fingerprint = key.fingerprint;
      checkSubjectKey(role, key);
      const ttl = ttlFor(role, input.ttlSeconds);
      const extensions = extensionsFor(role, input.extensions);
      const criticalOptions = criticalOptionsFor(role, input.criticalOptions);
      const now = this.#now();
      const { principals, grant } = await this.#principalsFor(role, requester, input.principals, now);
      // A privileged principal never outlives the grant it came from. Whole seconds, as the
      // certificate holds them, so that what is recorded and answered is what it says.
      const until = Math.min(now.getTime() + ttl * 1000, grant === null ? Infinity : Date.parse(grant.grantExpiresAt));
      const validBefore = wholeSeconds(until);
      if (validBefore.getTime() <= now.getTime()) {
        // Only a grant in its last fraction of a second gets here: rounded down, its end has passed.
        throw new CustosError(
          "principal_not_allowed",
          `the sudo grant for ${grant?.account}@${grant?.instanceId} ends at ${grant?.grantExpiresAt}: ` +
            "less than a whole second is left for a certificate",
        );
      }
      const plan: CertificatePlan = {
        role,
        key,
        principals,
        validAfter: wholeSeconds(now.getTime() - CLOCK_SKEW_MS),
        validBefore,
        extensions,
        criticalOptions,
        keyId: `${requester.display} role=${role.name} request=${actor.requestId}`,
        grantId: grant?.grantId ?? null,
        requester: requester.display,
        issuedAt: now,
      };
      return await this.#signAndRecord(actor, plan);
    } catch (e) {
      if (isCustosError(e) && e.isClientError) {
        const outcome = e.code === "invalid_request" ? "failure" : "denied";
        await this.#o.store.ssh.record(
          auditEntry(actor, "ssh.sign", `ssh/role/${role.name}`, { ...details, message: e.message }, outcome, e.code),
        );
        markAudited(e);
      }
      throw e;
    }
  }

  async #signAndRecord(actor: Actor, plan: CertificatePlan): Promise<SignedCertificate> {
    const ca = this.#activeCa(plan.role.certType);
    // A random 64-bit serial; the store's primary key catches the (2^-64) collision, and a fresh draw signs again.
    for (let attempt = 1; ; attempt++) {
      const serial = randomSerial();
      const tbs = certificateTbs({
        certType: plan.role.certType,
        subject: plan.key,
        serial,
        nonce: randomBytes(32),
        keyId: plan.keyId,
        principals: plan.principals,
        validAfter: plan.validAfter,
        validBefore: plan.validBefore,
        criticalOptions: plan.criticalOptions,
        extensions: plan.extensions,
        caKey: ca.record.publicKey,
      });
      const signature = await this.#o.keystore.sign(ca.ref, ca.scheme, tbs);
      const blob = certificateBlob(tbs, ca.record.algorithm, signature);
      // What the requester is told, and what the audit record says, about the certificate.
      const facts: Omit<SignedCertificate, "certificate"> = {
        serial: serial.toString(),
        keyId: plan.keyId,
        certType: plan.role.certType,
        caId: ca.record.id,
        principals: plan.principals,
        validAfter: plan.validAfter.toISOString(),
        validBefore: plan.validBefore.toISOString(),
        extensions: plan.extensions,
        criticalOptions: plan.criticalOptions,
        fingerprint: plan.key.fingerprint,
      };
      const record: SshCertificateRecord = {
        ...facts,
        role: plan.role.name,
        requester: plan.requester,
        issuedAt: plan.issuedAt.toISOString(),
        sudoGrantId: plan.grantId,
        status: "valid",
        revokedAt: null,
        revocationReason: null,
      };
      try {
        await this.#o.store.ssh.insertCertificate(
          record,
          auditEntry(actor, "ssh.sign", `ssh/role/${plan.role.name}`, { ...facts, sudoGrantId: plan.grantId }),
        );
      } catch (e) {
        if (attempt < 3 && isCustosError(e) && e.code === "conflict") continue;
        throw e;
      }
      return { certificate: certificateLine(blob, plan.keyId), ...facts };
    }
  }

  /**
   * The certificate's principals: those asked for, each admitted by the role for
   * this requester, or (none asked) every exact one the role yields except the
   * privileged ones. At most one sudo grant per certificate, so that revoking it
   * revokes exactly what it allowed.
   */
  async #principalsFor(
    role: SshRole,
    requester: Requester,
    requested: readonly string[] | undefined,
    now: Date,
  ): Promise<{ principals: string[]; grant: SudoInstance | null }> {
    if (requested !== undefined) {
      if (!Array.isArray(requested) || requested.length > MAX_CERTIFICATE_PRINCIPALS) {
        throw new CustosError("invalid_request", `principals must be a list of at most ${MAX_CERTIFICATE_PRINCIPALS}`);
      }
      for (const p of requested) {
        checkPrincipalText(p, "principal");
        if (role.certType === "host") checkHostPrincipal(p, "host principal");
      }
    }
    const allowed = await this.#allowed(role, requester, now);
    if (requested === undefined || requested.length === 0) {
      const principals = [...allowed.exact].filter(([, sudo]) => sudo === null).map(([p]) => p);
      // A host role stored before role writes refused upper case may still name such a host.
      if (role.certType === "host") for (const p of principals) checkHostPrincipal(p, "host principal");
      if (principals.length === 0) {
        throw new CustosError("principal_not_allowed", `role ${role.name} gives ${requester.display} no principals`);
      }
      if (principals.length > MAX_CERTIFICATE_PRINCIPALS) {
        throw new CustosError(
          "invalid_request",
          `role ${role.name} gives ${requester.display} ${principals.length} principals, more than a certificate ` +
            `can carry (${MAX_CERTIFICATE_PRINCIPALS}): name the ones needed in principals`,
        );
      }
      return { principals, grant: null };
    }
    const principals = [...new Set(requested)];
    let grant: SudoInstance | null = null;
    for (const p of principals) {
      const exact = allowed.exact.get(p);
      if (exact === undefined && !allowed.patterns.some((pattern) => literalAdmits(pattern, p))) {
        throw new CustosError(
          "principal_not_allowed",
          `role ${role.name} does not allow principal "${p.slice(0, 64)}" for ${requester.display}`,
        );
      }
      if (exact) {
        if (grant !== null && grant.grantId !== exact.grantId) {
          throw new CustosError(
            "principal_not_allowed",
            "privileged principals of different sudo grants need separate certificates",
          );
        }
        grant = exact;
      }
    }
    return { principals, grant };
  }

  async #allowed(role: SshRole, requester: Requester, now: Date): Promise<Allowed> {
    const exact = new Map<string, SudoInstance | null>();
    const patterns: string[] = [];
    const at = now.toISOString();
    const { store } = this.#o;
    const userId = requester.userId;
    const ownerId = requester.ownerRights ? userId : null;
    for (const entry of role.principals) {
      if (!isPrincipalTemplate(entry)) {
        if (entry.includes("*")) patterns.push(entry);
        else exact.set(entry, null);
        continue;
      }
      switch (entry) {
        case "{{username}}": {
          const user = userId === null ? undefined : await store.getUser(userId);
          if (user) exact.set(user.name, null);
          break;
        }
        case "{{groups}}":
          if (userId !== null) for (const g of await store.groupsOfUser(userId)) exact.set(g.name, null);
          break;
        case "{{owned-instances}}":
          if (ownerId !== null)
            for (const i of await store.ssh.ownedInstances(ownerId, at)) exact.set(i.instanceId, null);
          break;
        case "{{sudo-instances}}":
          // Ordered by instance, latest-expiring grant first: keep the first per principal.
          if (ownerId !== null) {
            for (const s of await store.ssh.sudoInstances(ownerId, at)) {
              const principal = `${s.account}@${s.instanceId}`;
              if (!exact.has(principal)) exact.set(principal, s);
            }
          }
          break;
        case "{{registered-instances}}":
          for (const i of await store.ssh.registeredInstances(requester.display, at)) exact.set(i.instanceId, null);
          break;
      }
    }
    return { exact, patterns };
  }

  // ---- certificates and revocation ----------------------------------------------

  async certificate(serial: string): Promise<CertificateView> {
    checkSerial(serial);
    const record = await this.#o.store.ssh.getCertificate(serial);
    if (record === undefined) throw new CustosError("not_found", `no SSH certificate ${serial}`);
    return this.#view(record);
  }

  async certificates(query: { status?: "valid" | "revoked"; limit: number }): Promise<CertificateView[]> {
    const now = this.#now().toISOString();
    return (await this.#o.store.ssh.listCertificates({ ...query, now })).map((r) => this.#view(r));
  }

  #view(r: SshCertificateRecord): CertificateView {
    const expired = r.status === "valid" && Date.parse(r.validBefore) <= this.#now().getTime();
    const { caId, certType, fingerprint, issuedAt, keyId, principals, requester, role, serial, sudoGrantId } = r;
    return {
      serial,
      keyId,
      certType,
      caId,
      principals,
      validAfter: r.validAfter,
      validBefore: r.validBefore,
      fingerprint,
      role,
      requester,
      issuedAt,
      sudoGrantId,
      status: expired ? "expired" : r.status,
      revokedAt: r.revokedAt,
      revocationReason: r.revocationReason,
    };
  }

  /** Revokes one certificate, or a key with every certificate of it; the KRL is regenerated in the same transaction. */
  async revoke(actor: Actor, input: { serial?: string; publicKey?: string; reason?: string }): Promise<Revoked> {
    const reason = checkReason(input.reason ?? "unspecified");
    const at = this.#now().toISOString();
    if ((input.serial === undefined) === (input.publicKey === undefined)) {
      throw new CustosError("invalid_request", "name exactly one of serial or publicKey");
    }
    if (input.serial !== undefined) {
      checkSerial(input.serial);
      const krl = await this.#o.store.ssh.revokeCertificate(
        input.serial,
        at,
        reason,
        this.#krlMaker(),
        auditEntry(actor, "ssh.revoke", `ssh/cert/${input.serial}`, { serial: input.serial, reason }),
      );
      return { revoked: [input.serial], krlVersion: krl.version };
    }
    if (typeof input.publicKey !== "string") {
      throw new CustosError("invalid_request", "publicKey must be an OpenSSH public key line");
    }
    const key = parsePublicKeyLine(input.publicKey);
    // A CA key's hash in the KRL revokes every certificate that CA signed (OpenSSH checks the signing key too).
    if (this.#cas.some((ca) => ca.record.publicKey.equals(key.blob))) {
      throw new CustosError(
        "invalid_request",
        `${key.fingerprint} is a CA key of this Custos: revoking it would revoke every certificate it signed`,
      );
    }
    const result = await this.#o.store.ssh.revokeKey(
      { fingerprint: key.fingerprint, fingerprintRaw: key.fingerprintRaw },
      at,
      reason,
      actor.principal,
      this.#krlMaker(),
      auditEntry(actor, "ssh.revoke", `ssh/key/${key.fingerprint}`, { fingerprint: key.fingerprint, reason }),
    );
    return { revoked: result.serials, fingerprint: key.fingerprint, krlVersion: result.krl.version };
  }

  // ---- sudo ---------------------------------------------------------------------------

  async grantSudo(actor: Actor, input: GrantSudoInput): Promise<SudoGrantView> {
    const grant = await newSudoGrant(this.#o.store, actor, input, this.#now());
    await this.#o.store.ssh.createSudoGrant(
      grant,
      auditEntry(actor, "ssh.sudo.grant", sudoResource(grant), { after: grant }),
    );
    return sudoGrantView(await subjectNames(this.#o.store), grant, this.#now());
  }

  async sudoGrants(activeOnly: boolean): Promise<SudoGrantView[]> {
    const now = this.#now();
    const grants = await this.#o.store.ssh.listSudoGrants(activeOnly ? now.toISOString() : undefined);
    const names = await subjectNames(this.#o.store);
    return grants.map((g) => sudoGrantView(names, g, now));
  }

  /** The resource grant `id` is audited under (its app's), or undefined when there is no such grant. */
  async sudoGrantResource(id: string): Promise<string | undefined> {
    const grant = await this.#sudoGrant(id);
    return grant === undefined ? undefined : sudoResource(grant);
  }

  /** Grant `id`, or undefined when there is none (an id of another shape names none). */
  async #sudoGrant(id: string) {
    return /^[0-9a-f-]{36}$/.test(id) ? this.#o.store.ssh.getSudoGrant(id) : undefined;
  }

  /** Ends the grant and revokes every unexpired certificate issued under it, with the KRL, atomically. */
  async revokeSudo(actor: Actor, id: string): Promise<{ grant: SudoGrantView } & Revoked> {
    const grant = await this.#sudoGrant(id);
    if (grant === undefined) throw new CustosError("not_found", `no SSH sudo grant ${id.slice(0, 64)}`);
    const at = this.#now().toISOString();
    const result = await this.#o.store.ssh.revokeSudoGrant(
      id,
      at,
      this.#krlMaker(),
      auditEntry(actor, "ssh.sudo.revoke", sudoResource(grant), { grant: id }),
    );
    return {
      grant: sudoGrantView(await subjectNames(this.#o.store), { ...grant, revokedAt: at }, this.#now()),
      revoked: result.serials,
      krlVersion: result.krl.version,
    };
  }
}

interface CertificatePlan {
  readonly role: SshRole;
  readonly key: SubjectKey;
  readonly principals: readonly string[];
  readonly validAfter: Date;
  readonly validBefore: Date;
  readonly extensions: readonly string[];
  readonly criticalOptions: Readonly<Record<string, string>>;
  readonly keyId: string;
  readonly grantId: string | null;
  readonly requester: string;
  readonly issuedAt: Date;
}

function roleRecord(
  name: string,
  spec: RoleSpec,
  builtin: boolean,
  now: string,
  revision: number,
  createdAt = now,
): SshRoleRecord {
  return {
    name,
    certType: spec.certType,
    spec: spec as unknown as Record<string, unknown>,
    builtin,
    createdAt,
    updatedAt: now,
    revision,
  };
}

/** Where an SSH sudo grant, its refusals and its revocation are audited: under its app. */
function sudoResource(grant: { readonly org: string; readonly space: string; readonly app: string }): string {
  return `ssh/sudo/${grant.org}/${grant.space}/${grant.app}`;
}

function checkRoleName(name: string): void {
  if (!/^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$/.test(name)) {
    throw new CustosError("invalid_request", "a role name is 1-64 characters of a-z, 0-9, '.', '_', '-'");
  }
}

function checkSerial(serial: string): void {
  if (!SERIAL_RE.test(serial) || BigInt(serial) > MAX_UINT64) {
    throw new CustosError("invalid_request", "serial must be a decimal number from 1 to 2^64-1");
  }
}

/** The instant `ms` rounded down to a whole second. */
function wholeSeconds(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

function randomSerial(): bigint {
  for (;;) {
    const serial = randomBytes(8).readBigUInt64BE();
    if (serial !== 0n) return serial;
  }
}
