import { type Actor, auditEntry, markAudited, systemActor, wasAudited } from "../audit/index.js";
import type { AuthService } from "../auth/index.js";
import type { CustosConfig } from "../config/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import type { Keystore } from "../hsm/index.js";
import { type Authority, type Issuer, parseCsr } from "../pki/index.js";
import type { App, Platform } from "../platform/index.js";
import type { DeliveredSecret, Secrets } from "../secrets/index.js";
import type { AuditEntry, InstanceListQuery, InstanceRecord, Store } from "../store/index.js";
import { bootstrapTokenId, bootstrapTokenMatches, newBootstrapToken } from "./bootstrap-token.js";
import { IDENTITY_KEY_TYPE_NAMES, identityKeyTypeAllowed, identityRequest, renewAtOf } from "./identity.js";
import { type InstanceClaims, JwtKeys } from "./jwt.js";
import { checkLabel, type InstanceNames, instanceResource, spiffeIdOf } from "./names.js";

export interface BrokerOptions {
  readonly store: Store;
  readonly keystore: Keystore;
  readonly auth: AuthService;
  readonly platform: Platform;
  readonly secrets: Secrets;
  readonly issuer: Issuer;
  readonly authority: Authority;
  readonly config: CustosConfig["broker"];
  /** Where clients reach Custos (the JWT issuer when none is configured). */
  readonly baseUrl: string;
  readonly clock?: () => Date;
}

/** The built-in policy of platform agents: instance management, nothing else. */
export const PLATFORM_AGENT_POLICY = "platform-agent";

/** How far a JWT's `nbf` precedes its `iat`: the 60 s the PKI backdates certificates by. */
const JWT_BACKDATE_SECONDS = 60;

/** The shortest lease an agent may ask for. */
const MIN_LEASE_SECONDS = 10;

/** The longest lease an agent may ask for at once (a year); it extends it as the instance keeps running. */
export const MAX_LEASE_SECONDS = 365 * 86_400;

export interface RegisterInput {
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly instance: string;
  readonly ttlSeconds?: number | undefined;
}

export interface Registered {
  readonly instance: string;
  /** Shown once; Custos keeps only its hash. */
  readonly bootstrapToken: string;
  readonly tokenExpiresAt: string;
  readonly leaseExpiresAt: string;
}

/** An instance as a listing shows it: names, state and lease. */
export interface InstanceSummary {
  readonly instance: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly spiffeId: string;
  readonly state: InstanceRecord["state"];
  readonly leaseExpiresAt: string;
  readonly registeredBy: string;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly stoppedAt: string | null;
  readonly stopReason: string | null;
}

/** An instance as the agent API shows it on its own: also what was issued to it. */
export interface InstanceView extends InstanceSummary {
  readonly bootstrapToken: { readonly state: string; readonly expiresAt: string } | null;
  readonly certificates: readonly { serial: string; notAfter: string; status: string }[];
  readonly jwts: readonly { jti: string; expiresAt: string; denied: boolean }[];
}

/** What an instance presented: its identity certificate (mTLS) or its JWT. */
export type InstanceCredential =
  | { readonly kind: "mtls"; readonly serial: string; readonly authorized: boolean }
  | { readonly kind: "jwt"; readonly token: string };

/** Who asked, for the audit record. */
export interface RequestInfo {
  readonly requestId: string;
  readonly source: string;
}

/** An instance whose credential checked out, for one request. */
export interface AuthenticatedInstance {
  readonly record: InstanceRecord;
  readonly app: App;
  readonly via: "mtls" | "jwt";
  /** The certificate serial (mTLS) or the JWT id. */
  readonly credentialId: string;
  readonly actor: Actor;
}

/** Certificate and JWT, as exchange and renew answer them. */
export interface IdentityAnswer {
  readonly instance: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly spiffeId: string;
  readonly certificate: string;
  readonly chain: string;
  readonly caChain: string;
  readonly notAfter: string;
  readonly renewAt: string;
  readonly jwt: string;
  readonly jwtExpiresAt: string;
  readonly leaseExpiresAt: string;
}

export interface ExchangeAnswer extends IdentityAnswer {
  readonly secrets: readonly DeliveredSecret[];
}

const INVALID_TOKEN = "invalid bootstrap token";

/** Why a bootstrap token was refused: recorded, never told to the caller. */
type TokenRefusal = "unknown" | "replay" | "expired" | "foreign" | "void";

const iso = (d: Date) => d.toISOString();
const plusSeconds = (d: Date, s: number) => new Date(d.getTime() + s * 1000);

/**
 * Whole seconds from `now` to the end of the instance's lease (at least 1): no
 * certificate or JWT outlives the lease that grants it, as a relying party that
 * checks neither the CRL nor introspection would otherwise trust it after the end.
 */
function leaseLeft(record: InstanceRecord, now: Date): number {
  return Math.max(1, Math.floor((Date.parse(record.leaseExpiresAt) - now.getTime()) / 1000));
}

/**
 * The container credential broker (docs/broker.md): platform agents register
 * instances and receive one-time bootstrap tokens; an instance exchanges its
 * token and a CSR for an identity certificate, a JWT and its app's secrets, renews
 * over mTLS, and loses everything the moment it stops (deregistered or its lease
 * lapsed).
 *
 * Every change commits with its audit record; every refusal of an instance's
 * credential is audited too (as a security event), with the token's id but never
 * the token.
 */
export class Broker {
  readonly #o: BrokerOptions;
  readonly #store: Store;
  readonly #now: () => Date;
  readonly #jwt: JwtKeys;
  readonly #issuerName: string;

  constructor(options: BrokerOptions) {
    this.#o = options;
    this.#store = options.store;
    this.#now = options.clock ?? (() => new Date());
    this.#jwt = new JwtKeys(options.keystore, options.store);
    this.#issuerName = options.config.jwtIssuer ?? options.baseUrl;
  }

  /** At start: the JWT signing key in the HSM and the built-in `platform-agent` policy. Idempotent. */
  async ensure(actor: Actor = systemActor("broker-init")): Promise<void> {
    await this.#jwt.ensure(actor);
    try {
      await this.#o.auth.getPolicy(PLATFORM_AGENT_POLICY);
    } catch (e) {
      if (!(isCustosError(e) && e.code === "not_found")) throw e;
      await this.#o.auth.putPolicy(actor, {
        name: PLATFORM_AGENT_POLICY,
        description: "platform agents: register, read and deregister container instances (built in)",
        rules: [{ resource: "instance/*", actions: ["instance:register", "instance:deregister", "instance:read"] }],
      });
    }
  }

  // ---- agents ------------------------------------------------------------------

  /** Registers an instance of an existing app and makes its one-time bootstrap token. */
  async register(actor: Actor, input: RegisterInput): Promise<Registered> {
    const names: InstanceNames = {
      org: checkLabel("org", input.org),
      space: checkLabel("space", input.space),
      app: checkLabel("app", input.app),
      instance: checkLabel("instance", input.instance),
    };
    const lease = checkLease(input.ttlSeconds ?? this.#o.config.defaultLeaseSeconds);
    const app = await this.#o.platform.getApp({ org: names.org, space: names.space, app: names.app });
    const now = this.#now();
    const token = newBootstrapToken();
    const tokenExpiresAt = iso(plusSeconds(now, this.#o.config.bootstrapTokenTtlSeconds));
    const leaseExpiresAt = iso(plusSeconds(now, lease));
    const record: InstanceRecord = {
      id: names.instance,
      ...names,
      appId: app.id,
      state: "registered",
      leaseExpiresAt,
      registeredBy: actor.principal,
      createdAt: iso(now),
      updatedAt: iso(now),
      stoppedAt: null,
      stopReason: null,
      revision: 1,
    };
    await this.#store.broker.register(
      record,
      {
        id: token.id,
        instanceId: names.instance,
        hash: token.hash,
        createdAt: iso(now),
        expiresAt: tokenExpiresAt,
        state: "unused",
        usedAt: null,
      },
      auditEntry(actor, "broker.register", instanceResource(names), {
        tokenId: token.id,
        tokenExpiresAt,
        leaseExpiresAt,
      }),
    );
    return { instance: names.instance, bootstrapToken: token.token, tokenExpiresAt, leaseExpiresAt };
  }

  /** The instance (lapsing it first if its lease has ended); `not_found` for an unknown id. */
  async instance(id: string): Promise<InstanceRecord> {
    const record = await this.find(id);
    if (!record) throw new CustosError("not_found", `no instance ${id}`);
    return this.#lapseIfDue(record);
  }

  /**
   * The instance as stored, or undefined: nothing else is done, so that a caller
   * can be authorised on it before anything happens on its behalf.
   */
  find(id: string): Promise<InstanceRecord | undefined> {
    return this.#store.broker.getInstance(checkLabel("instance", id));
  }

  /** The instance as it now is: stopped first if its lease has ended. */
  current(record: InstanceRecord): Promise<InstanceRecord> {
    return this.#lapseIfDue(record);
  }

  /** The instance as the agent API shows it: state, lease and what was issued to it. */
  async view(record: InstanceRecord): Promise<InstanceView> {
    const now = iso(this.#now());
    const [certificates, jwts, token] = await Promise.all([
      this.#store.broker.certificates(record.id),
      this.#store.broker.liveJwts(record.id, now),
      this.#tokenOf(record.id),
    ]);
    return {
      ...this.#summary(record),
      bootstrapToken: token === undefined ? null : { state: token.state, expiresAt: token.expiresAt },
      certificates: certificates.map((c) => ({
        serial: c.serial,
        notAfter: c.notAfter,
        status: c.status === "valid" && c.notAfter <= now ? "expired" : c.status,
      })),
      jwts: jwts.map((j) => ({ jti: j.jti, expiresAt: j.expiresAt, denied: j.deniedAt !== null })),
    };
  }

  #summary(record: InstanceRecord): InstanceSummary {
    return {
      instance: record.id,
      org: record.org,
      space: record.space,
      app: record.app,
      spiffeId: spiffeIdOf(this.#o.config.trustDomain, namesOf(record)),
      state: record.state,
      leaseExpiresAt: record.leaseExpiresAt,
      registeredBy: record.registeredBy,
      createdAt: record.createdAt,
      updatedAt: record.updatedAt,
      stoppedAt: record.stoppedAt,
      stopReason: record.stopReason,
    };
  }

  /**
   * Instances by the names they were registered under, in id order, `limit` at a time;
   * `after` the last id of the page before. The query is one `checkListQuery` passed
   * (the caller needs it checked first, to authorise on its scope). Those in scope
   * whose lease has lapsed are stopped first, so a listing never shows them live.
   */
  async list(query: InstanceListQuery): Promise<InstanceSummary[]> {
    const inScope = (r: InstanceRecord): boolean =>
      (query.org === undefined || r.org === query.org) &&
      (query.space === undefined || r.space === query.space) &&
      (query.app === undefined || r.app === query.app);
    await this.#lapseWhere(inScope);
    return (await this.#store.broker.listInstances(query)).map((r) => this.#summary(r));
  }

  #tokenOf(instanceId: string) {
    return this.#store.broker.tokenOfInstance(instanceId);
  }

  /**
   * Extends the lease of a live instance to `ttlSeconds` from now. A lease is never
   * shortened (`invalid_request`): the certificates and JWTs issued under it end
   * with it, and one that ended sooner would leave them valid past it for whoever
   * checks them offline. Deregistering ends it at once and revokes them.
   */
  async extendLease(actor: Actor, record: InstanceRecord, ttlSeconds: number): Promise<InstanceRecord> {
    const lease = checkLease(ttlSeconds);
    if (record.state === "stopped") throw new CustosError("conflict", `instance ${record.id} is stopped`);
    const now = this.#now();
    const leaseExpiresAt = iso(plusSeconds(now, lease));
    if (leaseExpiresAt < record.leaseExpiresAt) {
      const least = Math.max(MIN_LEASE_SECONDS, Math.ceil((Date.parse(record.leaseExpiresAt) - now.getTime()) / 1000));
      throw new CustosError(
        "invalid_request",
        `the lease of instance ${record.id} ends at ${record.leaseExpiresAt} and can only be extended: ` +
          `ttlSeconds must be at least ${least} (deregister the instance to end it now)`,
      );
    }
    await this.#store.broker.extendLease(
      record.id,
      record.revision,
      leaseExpiresAt,
      iso(now),
      auditEntry(actor, "broker.lease.extend", instanceResource(namesOf(record)), {
        before: record.leaseExpiresAt,
        after: leaseExpiresAt,
      }),
    );
    return this.instance(record.id);
  }

  /** Deregisters: the instance stops and everything issued to it is revoked. */
  async deregister(actor: Actor, record: InstanceRecord): Promise<InstanceRecord> {
    if (record.state === "stopped") throw new CustosError("conflict", `instance ${record.id} is already stopped`);
    await this.#stop(actor, record, "deregistered");
    return this.instance(record.id);
  }

  /**
   * Stops an instance: state, token and JWT deny-list in one transaction with the
   * audit record (from then on the broker refuses every credential of it), then
   * each certificate revoked with its CRL re-signed in the same transaction as the
   * revocation. A stop interrupted between the two is finished by `sweep`.
   */
  async #stop(actor: Actor, record: InstanceRecord, reason: "deregistered" | "lease-lapsed"): Promise<void> {
    const action = reason === "deregistered" ? "broker.deregister" : "broker.lease.lapse";
    const now = this.#now();
    const serials = await this.#store.broker.stop(
      record.id,
      iso(now),
      reason,
      auditEntry(actor, action, instanceResource(namesOf(record)), {
        reason,
        leaseExpiresAt: record.leaseExpiresAt,
      }),
    );
    await this.#o.issuer.revokeAll(actor, serials, "cessationOfOperation");
  }

  /** Stops the live instances `inScope` picks whose lease has ended, ahead of the sweep. */
  async #lapseWhere(inScope: (record: InstanceRecord) => boolean): Promise<void> {
    for (const record of await this.#store.broker.listLapsed(iso(this.#now()))) {
      if (inScope(record)) await this.#lapseIfDue(record);
    }
  }

  /** Stops the instance if its lease has ended; returns it as it now is. */
  async #lapseIfDue(record: InstanceRecord): Promise<InstanceRecord> {
    if (record.state === "stopped" || record.leaseExpiresAt > iso(this.#now())) return record;
    try {
      await this.#stop(systemActor("broker-lease"), record, "lease-lapsed");
    } catch (e) {
      // Stopped meanwhile by someone else: what counts is that it is stopped.
      if (!(isCustosError(e) && e.code === "conflict")) throw e;
    }
    return (await this.#store.broker.getInstance(record.id)) ?? record;
  }

  /**
   * Each app's instances by state (in the order of `appIds`), after stopping those
   * whose lease has lapsed (the sweep may not have come by yet): a lapsed lease
   * means stopped, here as on every request about the instance.
   */
  async instanceCounts(appIds: readonly string[]): Promise<Record<string, number>[]> {
    const apps = new Set(appIds);
    await this.#lapseWhere((r) => apps.has(r.appId));
    return Promise.all(appIds.map((id) => this.#store.broker.instanceCounts(id)));
  }

  /**
   * Stops every instance whose lease has lapsed, finishes stops interrupted before
   * their certificates were revoked, and forgets expired JWT ids. Returns how many
   * instances it stopped.
   */
  async sweep(now: Date = this.#now()): Promise<number> {
    const actor = systemActor("broker-sweep");
    let stopped = 0;
    for (const record of await this.#store.broker.listLapsed(iso(now))) {
      try {
        await this.#stop(actor, record, "lease-lapsed");
        stopped++;
      } catch (e) {
        if (!(isCustosError(e) && e.code === "conflict")) throw e;
      }
    }
    const unrevoked = await this.#store.broker.listUnrevoked(iso(now));
    if (unrevoked.length > 0) {
      await this.#o.issuer.revokeAll(
        actor,
        unrevoked.map((u) => u.serial),
        "cessationOfOperation",
      );
    }
    await this.#store.broker.pruneJwts(iso(now));
    return stopped;
  }

  // ---- instances ---------------------------------------------------------------

  /**
   * The bootstrap exchange: a valid token for this instance and a CSR give an
   * identity certificate, a JWT and the app's secrets. Token consumption, the
   * instance starting, the certificate, the JWT id and the audit records commit in
   * one transaction; of two exchanges racing with one token, the loser is refused
   * as a replay, and one racing a deregistration as a voided token.
   */
  async exchange(req: RequestInfo, input: { token: string; instance: string; csr: string }): Promise<ExchangeAnswer> {
    const requested = typeof input.instance === "string" ? input.instance : "";
    const anonymous: Actor = { principal: "anonymous", requestId: req.requestId, source: req.source };
    const refuse = async (
      reason: TokenRefusal,
      tokenId: string | null,
      record: InstanceRecord | undefined,
    ): Promise<never> => {
      await this.#store.broker.record(
        auditEntry(
          record ? instanceActor(record, req) : anonymous,
          "broker.exchange",
          record ? instanceResource(namesOf(record)) : "",
          { reason, tokenId, instance: requested.slice(0, 63) },
          "denied",
          "unauthenticated",
        ),
      );
      throw markAudited(new CustosError("unauthenticated", INVALID_TOKEN));
    };

    const tokenId = bootstrapTokenId(input.token);
    if (tokenId === undefined) return refuse("unknown", null, undefined);
    const token = await this.#store.broker.getToken(tokenId);
    if (token === undefined || !bootstrapTokenMatches(input.token, token.hash)) {
      return refuse("unknown", tokenId, undefined);
    }
    let record = await this.#store.broker.getInstance(token.instanceId);
    if (record === undefined) return refuse("unknown", tokenId, undefined);
    if (token.state === "used") return refuse("replay", tokenId, record);
    if (token.state === "void") return refuse("void", tokenId, record);
    const now = this.#now();
    if (token.expiresAt <= iso(now)) return refuse("expired", tokenId, record);
    if (token.instanceId !== requested) return refuse("foreign", tokenId, record);
    record = await this.#lapseIfDue(record);
    if (record.state !== "registered") return refuse("void", tokenId, record);

    const actor = instanceActor(record, req);
    return this.#auditFailure(actor, "broker.exchange", record, async () => {
      const csr = await parseCsr(input.csr);
      const app = await this.#appOf(record);
      const secrets = await this.#o.secrets.forApp(app);
      const identity = await this.#identity(actor, record, csr, now);
      const audits = [
        ...identity.pkiAudits,
        auditEntry(actor, "broker.exchange", instanceResource(namesOf(record)), {
          tokenId,
          serial: identity.serial,
          jti: identity.jti,
          spiffeId: identity.answer.spiffeId,
          notAfter: identity.answer.notAfter,
          secrets: secrets.map((s) => ({ path: s.path, version: s.version })),
        }),
      ];
      try {
        await this.#store.broker.exchange(tokenId, iso(now), { ...identity.credentials, audits });
      } catch (e) {
        if (!isCustosError(e) || e.code !== "conflict") throw e;
        // The token changed since it was read: another exchange used it, or a deregistration voided it.
        const after = await this.#store.broker.getToken(tokenId);
        return refuse(after?.state === "void" ? "void" : "replay", tokenId, record);
      }
      return { ...identity.answer, secrets };
    });
  }

  /** Checks an instance's credential (and its lease); refusals are audited under `action`. */
  async authenticate(
    req: RequestInfo,
    credential: InstanceCredential | null,
    action: string,
  ): Promise<AuthenticatedInstance> {
    const anonymous: Actor = { principal: "anonymous", requestId: req.requestId, source: req.source };
    const refuse = async (
      code: "unauthenticated" | "credential_revoked",
      message: string,
      record?: InstanceRecord,
      details: Record<string, unknown> = {},
    ): Promise<never> => {
      await this.#store.broker.record(
        auditEntry(
          record ? instanceActor(record, req) : anonymous,
          action,
          record ? instanceResource(namesOf(record)) : "",
          { ...details, reason: message },
          "denied",
          code,
        ),
      );
      throw markAudited(new CustosError(code, message));
    };
    if (credential === null) {
      return refuse("unauthenticated", "an identity certificate (mutual TLS) or an instance JWT is required");
    }
    const now = this.#now();
    let record: InstanceRecord | undefined;
    let credentialId: string;
    if (credential.kind === "mtls") {
      credentialId = credential.serial;
      const cert = await this.#store.broker.certificate(credential.serial);
      if (cert === undefined) return refuse("unauthenticated", "the client certificate is not an instance identity");
      record = await this.#store.broker.getInstance(cert.instanceId);
      if (record === undefined) return refuse("unauthenticated", "the client certificate is not an instance identity");
      const details = { serial: cert.serial };
      if (cert.status === "revoked")
        return refuse("credential_revoked", "the identity certificate is revoked", record, details);
      if (cert.notAfter <= iso(now) || !credential.authorized) {
        return refuse("credential_revoked", "the identity certificate is expired or not trusted", record, details);
      }
    } else {
      let claims: InstanceClaims;
      try {
        claims = await this.#jwt.verify(credential.token, this.#issuerName, this.#o.config.jwtAudience, now);
      } catch {
        return refuse("unauthenticated", "invalid or expired JWT");
      }
      credentialId = claims.jti;
      const jwt = await this.#store.broker.getJwt(claims.jti);
      record = jwt === undefined ? undefined : await this.#store.broker.getInstance(jwt.instanceId);
      if (jwt === undefined || record === undefined || record.id !== claims.instance) {
        return refuse("unauthenticated", "invalid or expired JWT");
      }
      if (jwt.deniedAt !== null) return refuse("credential_revoked", "the JWT is revoked", record, { jti: jwt.jti });
    }
    record = await this.#lapseIfDue(record);
    if (record.state !== "running") {
      return refuse("credential_revoked", `instance ${record.id} is stopped`, record, { credentialId });
    }
    const app = await this.#appOf(record).catch((e: unknown) =>
      isCustosError(e) && e.code === "credential_revoked"
        ? refuse("credential_revoked", e.message, record)
        : Promise.reject(e),
    );
    return { record, app, via: credential.kind, credentialId, actor: instanceActor(record, req) };
  }

  /** A new certificate for the CSR's key and a new JWT (mTLS only). */
  async renew(who: AuthenticatedInstance, csrText: string): Promise<IdentityAnswer> {
    const { actor, record } = who;
    return this.#auditFailure(actor, "broker.renew", record, async () => {
      if (who.via !== "mtls") {
        throw new CustosError("unauthenticated", "renewal needs the identity certificate (mutual TLS)");
      }
      const csr = await parseCsr(csrText);
      const identity = await this.#identity(actor, record, csr, this.#now());
      const audits = [
        ...identity.pkiAudits,
        auditEntry(actor, "broker.renew", instanceResource(namesOf(record)), {
          renewedFrom: who.credentialId,
          serial: identity.serial,
          jti: identity.jti,
          notAfter: identity.answer.notAfter,
        }),
      ];
      await this.#issue({ ...identity.credentials, audits }, record.id);
      return identity.answer;
    });
  }

  /** A fresh JWT. */
  async refreshJwt(who: AuthenticatedInstance): Promise<{ jwt: string; jwtExpiresAt: string }> {
    const { actor, record } = who;
    return this.#auditFailure(actor, "broker.jwt", record, async () => {
      const signed = await this.#signJwt(record, this.#now());
      await this.#issue(
        {
          instanceId: record.id,
          certificate: null,
          jwt: signed.record,
          audits: [
            auditEntry(actor, "broker.jwt", instanceResource(namesOf(record)), {
              via: who.via,
              jti: signed.claims.jti,
              expiresAt: signed.record.expiresAt,
            }),
          ],
        },
        record.id,
      );
      return { jwt: signed.jwt, jwtExpiresAt: signed.record.expiresAt };
    });
  }

  /** Every secret the instance's app may read (latest versions). */
  async secrets(who: AuthenticatedInstance): Promise<DeliveredSecret[]> {
    return this.#auditFailure(who.actor, "broker.secrets.read", who.record, async () => {
      const secrets = await this.#o.secrets.forApp(who.app);
      await this.#store.broker.record(
        auditEntry(who.actor, "broker.secrets.read", instanceResource(namesOf(who.record)), {
          via: who.via,
          secrets: secrets.map((s) => ({ path: s.path, version: s.version })),
        }),
      );
      return secrets;
    });
  }

  /** One secret; `forbidden` (audited) unless it is the app's own or granted to it. */
  async secret(who: AuthenticatedInstance, path: string): Promise<DeliveredSecret> {
    const resource = instanceResource(namesOf(who.record));
    return this.#auditFailure(
      who.actor,
      "broker.secret.read",
      who.record,
      async () => {
        const secret = await this.#o.secrets.readForApp(who.app, path);
        await this.#store.broker.record(
          auditEntry(who.actor, "broker.secret.read", resource, {
            via: who.via,
            path: secret.path,
            version: secret.version,
          }),
        );
        return secret;
      },
      { path: typeof path === "string" ? path.slice(0, 600) : null },
    );
  }

  /** The identity Custos sees. */
  async whoami(who: AuthenticatedInstance): Promise<Record<string, unknown>> {
    const { record } = who;
    const names = namesOf(record);
    await this.#store.broker.record(
      auditEntry(who.actor, "broker.whoami", instanceResource(names), { via: who.via, credentialId: who.credentialId }),
    );
    return {
      instance: record.id,
      org: record.org,
      space: record.space,
      app: record.app,
      spiffeId: spiffeIdOf(this.#o.config.trustDomain, names),
      state: record.state,
      leaseExpiresAt: record.leaseExpiresAt,
      authenticatedBy: who.via,
      ...(who.via === "mtls" ? { serial: who.credentialId } : { jti: who.credentialId }),
    };
  }

  /** The JWT signing keys. */
  jwks(): { keys: object[] } {
    return this.#jwt.jwks();
  }

  /** Whether a JWT is active now: signature, issuer, audience, lifetime, deny-list and instance state. */
  async introspect(token: string): Promise<{ active: boolean; claims?: InstanceClaims }> {
    const now = this.#now();
    let claims: InstanceClaims;
    try {
      claims = await this.#jwt.verify(token, this.#issuerName, this.#o.config.jwtAudience, now);
    } catch {
      return { active: false };
    }
    const jwt = await this.#store.broker.getJwt(claims.jti);
    if (jwt === undefined || jwt.deniedAt !== null || jwt.instanceId !== claims.instance) return { active: false };
    const record = await this.#store.broker.getInstance(jwt.instanceId);
    if (record === undefined) return { active: false };
    if ((await this.#lapseIfDue(record)).state !== "running") return { active: false };
    return { active: true, claims };
  }

  // ---- helpers -------------------------------------------------------------------

  /** The instance's app; a deleted app leaves its instances nothing to hold. */
  async #appOf(record: InstanceRecord): Promise<App> {
    const app = await this.#o.platform.appById(record.appId);
    if (app === undefined) throw new CustosError("credential_revoked", `the app of instance ${record.id} was deleted`);
    return app;
  }

  /** Certificate (built, not yet stored) and JWT (signed, not yet recorded) for an instance. */
  async #identity(actor: Actor, record: InstanceRecord, csr: Awaited<ReturnType<typeof parseCsr>>, now: Date) {
    if (!identityKeyTypeAllowed(csr.keyType)) {
      throw new CustosError(
        "key_type_not_allowed",
        `identity certificates are issued for ${IDENTITY_KEY_TYPE_NAMES} keys, not ${csr.keyType}`,
      );
    }
    const names = namesOf(record);
    const { trustDomain, identityTtlSeconds } = this.#o.config;
    const ttl = Math.min(identityTtlSeconds, leaseLeft(record, now));
    const { record: certificate, issued } = await this.#o.issuer.build(
      actor,
      identityRequest(names, trustDomain, csr.publicKey, csr.keyType, ttl),
    );
    const signed = await this.#signJwt(record, now);
    const answer: IdentityAnswer = {
      instance: record.id,
      org: record.org,
      space: record.space,
      app: record.app,
      spiffeId: spiffeIdOf(trustDomain, names),
      certificate: issued.certificate,
      chain: issued.chain,
      caChain: issued.caChain,
      notAfter: issued.notAfter,
      renewAt: renewAtOf(issued.notBefore, issued.notAfter),
      jwt: signed.jwt,
      jwtExpiresAt: signed.record.expiresAt,
      leaseExpiresAt: record.leaseExpiresAt,
    };
    return {
      answer,
      serial: certificate.serial,
      jti: signed.claims.jti,
      pkiAudits: [this.#o.issuer.issueAudit(actor, certificate, "broker")] as AuditEntry[],
      credentials: { instanceId: record.id, certificate, jwt: signed.record },
    };
  }

  async #signJwt(record: InstanceRecord, now: Date) {
    const { trustDomain, jwtAudience, jwtTtlSeconds } = this.#o.config;
    const names = namesOf(record);
    const iat = Math.floor(now.getTime() / 1000);
    const signed = await this.#jwt.sign({
      iss: this.#issuerName,
      sub: spiffeIdOf(trustDomain, names),
      aud: [...jwtAudience],
      iat,
      // Backdated like the identity certificate, so that a relying party whose clock is a little
      // behind ours (jose allows no skew by default) does not refuse a fresh JWT.
      nbf: iat - JWT_BACKDATE_SECONDS,
      exp: iat + Math.min(jwtTtlSeconds, leaseLeft(record, now)),
      org: record.org,
      space: record.space,
      app: record.app,
      instance: record.id,
    });
    return {
      jwt: signed.jwt,
      claims: signed.claims,
      record: {
        jti: signed.claims.jti,
        instanceId: record.id,
        issuedAt: iso(now),
        expiresAt: new Date(signed.claims.exp * 1000).toISOString(),
        deniedAt: null,
      },
    };
  }

  /** Records credentials of a running instance; one stopped meanwhile gets `credential_revoked`. */
  async #issue(credentials: Parameters<Store["broker"]["issue"]>[0], instanceId: string): Promise<void> {
    try {
      await this.#store.broker.issue(credentials);
    } catch (e) {
      if (isCustosError(e) && e.code === "conflict") {
        throw new CustosError("credential_revoked", `instance ${instanceId} is stopped`);
      }
      throw e;
    }
  }

  /** Runs `fn`; a failure it did not audit itself is recorded under `action` before it goes on. */
  async #auditFailure<T>(
    actor: Actor,
    action: string,
    record: InstanceRecord,
    fn: () => Promise<T>,
    details: Record<string, unknown> = {},
  ): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (wasAudited(e)) throw e;
      const error = isCustosError(e) ? e : new CustosError("internal", "internal error", { cause: e });
      const denied = ["forbidden", "unauthenticated", "credential_revoked"].includes(error.code);
      await this.#store.broker.record(
        auditEntry(
          actor,
          action,
          instanceResource(namesOf(record)),
          { ...details, ...(error.code === "internal" ? {} : { message: error.message }) },
          denied ? "denied" : "failure",
          error.code,
        ),
      );
      throw markAudited(error);
    }
  }
}

function checkLease(ttlSeconds: unknown): number {
  if (
    typeof ttlSeconds !== "number" ||
    !Number.isInteger(ttlSeconds) ||
    ttlSeconds < MIN_LEASE_SECONDS ||
    ttlSeconds > MAX_LEASE_SECONDS
  ) {
    throw new CustosError(
      "invalid_request",
      `ttlSeconds must be an integer from ${MIN_LEASE_SECONDS} to ${MAX_LEASE_SECONDS}`,
    );
  }
  return ttlSeconds;
}

function namesOf(record: InstanceRecord): InstanceNames {
  return { org: record.org, space: record.space, app: record.app, instance: record.id };
}

function instanceActor(record: InstanceRecord, req: RequestInfo): Actor {
  return { principal: `instance:${record.id}`, requestId: req.requestId, source: req.source };
}
