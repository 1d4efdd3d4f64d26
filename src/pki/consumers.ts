import { createPrivateKey, randomUUID } from "node:crypto";
import { type Actor, auditEntry, systemActor } from "../audit/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import type { Keystore } from "../hsm/index.js";
import type {
  CertificateRecord,
  ConsumerAgentRecord,
  ConsumerGenerationRecord,
  ConsumerRecord,
  ConsumerRotation,
  Store,
} from "../store/index.js";
import { type Authority, CONSUMER_SEAL_KEY_SETTING } from "./authority.js";
import { renewAtOf } from "./certificate.js";
import { defaultKeyType, type Issuer } from "./issuer.js";
import { generateCallerKey } from "./keys.js";
import { type CheckedNames, checkKeyType, checkNames, checkRoleName, checkTtl, isKeyType, type Role } from "./role.js";

/** What a consumer's certificates are issued for, as stored in its record. */
interface ConsumerRequest {
  readonly commonName: string | null;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly ttlSeconds: number;
  readonly keyType: string;
}

export interface ConsumerInput {
  readonly role?: unknown;
  readonly commonName?: unknown;
  readonly dnsNames?: unknown;
  readonly ipAddresses?: unknown;
  readonly ttlSeconds?: unknown;
  readonly keyType?: unknown;
}

export interface GenerationView {
  readonly generation: number;
  readonly serial: string;
  readonly fingerprint: string;
  readonly notAfter: string;
}

export interface AgentView {
  readonly id: string;
  readonly fingerprint: string;
  readonly serves: "target" | "previous" | "other";
  readonly reportedAt: string;
  readonly stale: boolean;
}

export interface ConsumerView {
  readonly name: string;
  readonly role: string;
  readonly commonName: string | null;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly ttlSeconds: number;
  readonly state: "converged" | "rotating";
  readonly target: GenerationView;
  readonly previous: GenerationView | null;
  readonly rotation: ConsumerRotation | null;
  readonly agents: readonly AgentView[];
}

interface MaterialHead {
  readonly generation: number;
  readonly serial: string;
  readonly fingerprint: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly renewAt: string;
}

/** What an agent fetches: the target certificate and, unless it already serves it, its key and chain. */
export type ConsumerMaterial =
  | (MaterialHead & { readonly unchanged: true })
  | (MaterialHead & { readonly certificate: string; readonly chain: string; readonly privateKey: string });

const AGENT_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const FINGERPRINT = /^[0-9a-f]{64}$/;

/**
 * TLS consumers (the router): one target certificate per consumer, shared by all
 * its agents, whose key Custos makes and keeps sealed by the HSM. Rotation stages a
 * new generation as the target; agents pick it up and report what they serve; the
 * rotation completes when every agent that is not stale serves the target.
 * Rollback makes the previous generation the target again.
 */
export class Consumers {
  readonly #store: Store;
  readonly #keystore: Keystore;
  readonly #issuer: Issuer;
  readonly #authority: Authority;
  readonly #staleMs: number;
  readonly #now: () => Date;

  constructor(options: {
    store: Store;
    keystore: Keystore;
    issuer: Issuer;
    authority: Authority;
    agentStaleSeconds: number;
    clock?: () => Date;
  }) {
    this.#store = options.store;
    this.#keystore = options.keystore;
    this.#issuer = options.issuer;
    this.#authority = options.authority;
    this.#staleMs = options.agentStaleSeconds * 1000;
    this.#now = options.clock ?? (() => new Date());
  }

  /** The role named in a PUT body, so the API can authorise issuing under it first. */
  static roleOf(input: ConsumerInput): string {
    return checkRoleName(input.role);
  }

  /**
   * Creates the consumer with generation 1, or updates what its certificates are
   * issued for (taking effect at the next rotation or renewal).
   */
  async put(actor: Actor, name: string, input: ConsumerInput): Promise<ConsumerView> {
    checkRoleName(name);
    const role = await this.#issuer.role(Consumers.roleOf(input));
    const request = consumerRequest(role, input);
    const existing = await this.#store.getConsumer(name);
    const now = this.#now().toISOString();
    if (existing) {
      const updated: ConsumerRecord = { ...existing, role: role.name, request: { ...request }, updatedAt: now };
      await this.#store.writeConsumer(
        { consumer: updated, expectedRevision: existing.revision },
        auditEntry(actor, "cert.consumer.update", `cert/${name}`, {
          before: { role: existing.role, ...existing.request },
          after: { role: role.name, ...request },
        }),
      );
      return this.get(name);
    }
    const generation = await this.#newGeneration(actor, name, 1, role, request);
    const consumer: ConsumerRecord = {
      name,
      role: role.name,
      request: { ...request },
      targetGeneration: 1,
      previousGeneration: null,
      rotation: null,
      createdAt: now,
      updatedAt: now,
      revision: 1,
    };
    await this.#store.writeConsumer(
      { consumer, expectedRevision: null, addGeneration: generation },
      this.#issuer.issueAudit(actor, generation.certificate, "consumer", { consumer: name, generation: 1 }),
    );
    return this.get(name);
  }

  async get(name: string): Promise<ConsumerView> {
    return this.#view(await this.#settled(await this.#consumer(name)));
  }

  async list(): Promise<ConsumerView[]> {
    return Promise.all((await this.#store.listConsumers()).map(async (c) => this.#view(await this.#settled(c))));
  }

  /** Stages a new generation as the target. `conflict` while a rotation is in progress. */
  async rotate(actor: Actor, name: string): Promise<ConsumerView> {
    const consumer = await this.#settled(await this.#consumer(name));
    if (await this.#rotating(consumer)) {
      throw new CustosError("conflict", `a rotation of ${name} is in progress: wait for it, or roll it back`);
    }
    return this.#stage(actor, consumer, "rotate");
  }

  /**
   * Renewal asked by an agent serving `fingerprint`: stages a new generation when
   * that is still the target, it is past its renewal time and nothing is rotating;
   * otherwise (another agent got there first) answers the consumer as it is.
   */
  async renew(actor: Actor, name: string, fingerprint: unknown): Promise<ConsumerView> {
    const fp = checkFingerprint(fingerprint);
    const consumer = await this.#settled(await this.#consumer(name));
    const target = await this.#generation(consumer, consumer.targetGeneration);
    const due = renewAtOf(target.notBefore, target.notAfter).getTime() <= this.#now().getTime();
    if (target.fingerprint !== fp || !due || (await this.#rotating(consumer))) return this.#view(consumer);
    try {
      return await this.#stage(actor, consumer, "renew");
    } catch (e) {
      if (isCustosError(e) && e.code === "conflict") return this.get(name);
      throw e;
    }
  }

  async #stage(actor: Actor, consumer: ConsumerRecord, kind: "rotate" | "renew"): Promise<ConsumerView> {
    const role = await this.#issuer.role(consumer.role);
    const request = consumer.request as unknown as ConsumerRequest;
    const to = (await this.#latestGeneration(consumer)) + 1;
    const generation = await this.#newGeneration(actor, consumer.name, to, role, request);
    const now = this.#now().toISOString();
    const rotation: ConsumerRotation = { kind, from: consumer.targetGeneration, to, startedAt: now, completedAt: null };
    await this.#store.writeConsumer(
      {
        consumer: {
          ...consumer,
          targetGeneration: to,
          previousGeneration: consumer.targetGeneration,
          rotation,
          updatedAt: now,
        },
        expectedRevision: consumer.revision,
        addGeneration: generation,
      },
      this.#issuer.issueAudit(actor, generation.certificate, kind === "rotate" ? "consumer-rotate" : "consumer-renew", {
        consumer: consumer.name,
        generation: to,
        from: consumer.targetGeneration,
      }),
    );
    return this.get(consumer.name);
  }

  /** Makes the previous generation the target again. `conflict` when there is none. */
  async rollback(actor: Actor, name: string): Promise<ConsumerView> {
    const consumer = await this.#consumer(name);
    const back = consumer.previousGeneration;
    if (back === null) throw new CustosError("conflict", `${name} has no previous certificate to go back to`);
    const previous = await this.#generation(consumer, back);
    if (previous.status === "revoked" || Date.parse(previous.notAfter) <= this.#now().getTime()) {
      throw new CustosError("conflict", `${name}'s previous certificate is revoked or expired; rotate instead`);
    }
    const now = this.#now().toISOString();
    const rotation: ConsumerRotation = {
      kind: "rollback",
      from: consumer.targetGeneration,
      to: back,
      startedAt: now,
      completedAt: null,
    };
    await this.#store.writeConsumer(
      {
        consumer: { ...consumer, targetGeneration: back, previousGeneration: null, rotation, updatedAt: now },
        expectedRevision: consumer.revision,
      },
      auditEntry(actor, "cert.rollback", `cert/${name}`, { from: consumer.targetGeneration, to: back }),
    );
    return this.get(name);
  }

  /** The target certificate for an agent; its key only when `known` is not already the target. */
  async material(name: string, query: { role?: unknown; known?: unknown }): Promise<ConsumerMaterial> {
    const consumer = await this.#consumer(name);
    if (query.role !== undefined && query.role !== consumer.role) {
      throw new CustosError(
        "conflict",
        `consumer ${name} is issued under role ${consumer.role}, not ${String(query.role)}`,
      );
    }
    const { generation, cert } = await this.#generationWithCertificate(consumer, consumer.targetGeneration);
    const head: MaterialHead = {
      generation: generation.generation,
      serial: cert.serial,
      fingerprint: cert.fingerprint,
      notBefore: cert.notBefore,
      notAfter: cert.notAfter,
      renewAt: renewAtOf(cert.notBefore, cert.notAfter).toISOString(),
    };
    if (query.known !== undefined && query.known === cert.fingerprint) return { ...head, unchanged: true };
    const privateKey = await this.#unseal(name, generation.generation, generation.sealedKey);
    return { ...head, certificate: cert.pem, chain: this.#authority.issuer(cert.issuerId).certPem, privateKey };
  }

  /** Records what an agent serves; completes the rotation when this report makes every live agent serve the target. */
  async report(actor: Actor, name: string, agentId: unknown, fingerprint: unknown): Promise<ConsumerView> {
    if (typeof agentId !== "string" || !AGENT_ID.test(agentId)) {
      throw new CustosError("invalid_request", "an agent id is 1-128 characters of letters, digits and . _ : -");
    }
    const fp = checkFingerprint(fingerprint);
    for (let attempt = 1; ; attempt++) {
      const consumer = await this.#consumer(name);
      const now = this.#now();
      const agent: ConsumerAgentRecord = { consumer: name, agentId, fingerprint: fp, reportedAt: now.toISOString() };
      const agents = [...(await this.#store.listConsumerAgents(name)).filter((a) => a.agentId !== agentId), agent];
      const target = await this.#generation(consumer, consumer.targetGeneration);
      const completes =
        consumer.rotation !== null &&
        consumer.rotation.completedAt === null &&
        this.#converged(agents, target.fingerprint, now);
      const update = completes ? { consumer: completedAt(consumer, now), expectedRevision: consumer.revision } : null;
      try {
        await this.#store.reportConsumerAgent(
          agent,
          update,
          auditEntry(actor, "cert.agent.report", `cert/${name}`, {
            agent: agentId,
            fingerprint: fp,
            ...(completes ? { rotationCompleted: consumer.rotation } : {}),
          }),
        );
        return this.get(name);
      } catch (e) {
        // The consumer moved on (a rotation started) between reading and writing: judge again.
        if (!(isCustosError(e) && e.code === "conflict") || attempt >= 3) throw e;
      }
    }
  }

  /**
   * The consumer with its open rotation completed when every live agent already
   * serves the target: time alone makes an agent stale, and a rotation no live agent
   * has to take up completes without any report. So `state` and `completedAt` always
   * agree. Costs reads only while a rotation is open, and one audited write when it
   * completes (even on a GET); the write is a compare-and-set on the revision, so a
   * concurrent report, rotation or rollback wins and is judged again.
   */
  async #settled(read: ConsumerRecord): Promise<ConsumerRecord> {
    let consumer = read;
    for (let attempt = 1; ; attempt++) {
      const rotation = consumer.rotation;
      if (rotation === null || rotation.completedAt !== null) return consumer;
      const now = this.#now();
      const target = await this.#generation(consumer, consumer.targetGeneration);
      const agents = await this.#store.listConsumerAgents(consumer.name);
      if (!this.#converged(agents, target.fingerprint, now)) return consumer;
      const completed = completedAt(consumer, now);
      try {
        await this.#store.writeConsumer(
          { consumer: completed, expectedRevision: consumer.revision },
          auditEntry(systemActor(`rotation-${randomUUID()}`), "cert.rotation.complete", `cert/${consumer.name}`, {
            rotationCompleted: rotation,
          }),
        );
        return { ...completed, revision: consumer.revision + 1 };
      } catch (e) {
        if (!(isCustosError(e) && e.code === "conflict")) throw e;
        consumer = await this.#consumer(consumer.name);
        // Still contended: answer the consumer as it is; the next look completes it.
        if (attempt >= 3) return consumer;
      }
    }
  }

  #converged(agents: readonly ConsumerAgentRecord[], fingerprint: string, now: Date): boolean {
    return agents.every((a) => this.#stale(a, now) || a.fingerprint === fingerprint);
  }

  #stale(agent: ConsumerAgentRecord, now: Date): boolean {
    return now.getTime() - Date.parse(agent.reportedAt) > this.#staleMs;
  }

  async #rotating(consumer: ConsumerRecord): Promise<boolean> {
    return (await this.#view(consumer)).state === "rotating";
  }

  async #view(consumer: ConsumerRecord): Promise<ConsumerView> {
    const now = this.#now();
    const target = await this.#generation(consumer, consumer.targetGeneration);
    const previous =
      consumer.previousGeneration === null ? null : await this.#generation(consumer, consumer.previousGeneration);
    const agents = await this.#store.listConsumerAgents(consumer.name);
    const request = consumer.request as unknown as ConsumerRequest;
    return {
      name: consumer.name,
      role: consumer.role,
      commonName: request.commonName,
      dnsNames: request.dnsNames,
      ipAddresses: request.ipAddresses,
      ttlSeconds: request.ttlSeconds,
      state: this.#converged(agents, target.fingerprint, now) ? "converged" : "rotating",
      target: generationView(consumer.targetGeneration, target),
      previous: previous === null ? null : generationView(consumer.previousGeneration as number, previous),
      rotation: consumer.rotation,
      agents: agents.map((a) => ({
        id: a.agentId,
        fingerprint: a.fingerprint,
        serves:
          a.fingerprint === target.fingerprint
            ? "target"
            : a.fingerprint === previous?.fingerprint
              ? "previous"
              : "other",
        reportedAt: a.reportedAt,
        stale: this.#stale(a, now),
      })),
    };
  }

  async #consumer(name: string): Promise<ConsumerRecord> {
    const consumer = await this.#store.getConsumer(checkRoleName(name));
    if (!consumer) throw new CustosError("not_found", `no certificate consumer ${name}`);
    return consumer;
  }

  async #generation(consumer: ConsumerRecord, generation: number): Promise<CertificateRecord> {
    return (await this.#generationWithCertificate(consumer, generation)).cert;
  }

  async #generationWithCertificate(
    consumer: ConsumerRecord,
    number: number,
  ): Promise<{ generation: ConsumerGenerationRecord; cert: CertificateRecord }> {
    const generation = await this.#store.getConsumerGeneration(consumer.name, number);
    const cert = generation && (await this.#store.getCertificate(generation.serial));
    if (!generation || !cert) throw new CustosError("internal", `consumer ${consumer.name} lost generation ${number}`);
    return { generation, cert };
  }

  async #latestGeneration(consumer: ConsumerRecord): Promise<number> {
    let latest = Math.max(consumer.targetGeneration, consumer.previousGeneration ?? 0);
    // A rollback forgets the generation it left; never reuse its number.
    while (await this.#store.getConsumerGeneration(consumer.name, latest + 1)) latest++;
    return latest;
  }

  async #newGeneration(actor: Actor, name: string, generation: number, role: Role, request: ConsumerRequest) {
    if (!isKeyType(request.keyType)) throw new CustosError("internal", "a consumer's key type is unknown");
    checkKeyType(role, request.keyType);
    const names: CheckedNames = checkNames(role, {
      // Checked when the consumer was defined; one defined before CNs were bounded still rotates.
      ...(request.commonName === null ? {} : { commonName: request.commonName, commonNameDerived: true }),
      dnsNames: request.dnsNames,
      ipAddresses: request.ipAddresses,
      uris: [],
    });
    const ttlSeconds = checkTtl(role, request.ttlSeconds);
    const key = await generateCallerKey(request.keyType);
    const { record } = await this.#issuer.build(actor, {
      role,
      names,
      publicKey: key.publicKey,
      keyType: request.keyType,
      ttlSeconds,
    });
    const sealedKey = await this.#seal(name, generation, key.privateKeyPem);
    return {
      generation: {
        consumer: name,
        generation,
        serial: record.serial,
        sealedKey,
        createdAt: this.#now().toISOString(),
      },
      certificate: record,
    };
  }

  async #sealKey(): Promise<Buffer> {
    const wrapped = await this.#store.getSetting(CONSUMER_SEAL_KEY_SETTING);
    if (wrapped === undefined) throw new CustosError("not_initialized", "the PKI is not initialised");
    return Buffer.from(wrapped, "base64");
  }

  async #seal(name: string, generation: number, privateKeyPem: string): Promise<Buffer> {
    const der = createPrivateKey(privateKeyPem).export({ type: "pkcs8", format: "der" });
    try {
      const sealed = await this.#keystore.encrypt(await this.#sealKey(), der, sealAad(name, generation));
      return Buffer.concat([sealed.iv, sealed.ciphertext]);
    } finally {
      der.fill(0);
    }
  }

  async #unseal(name: string, generation: number, sealed: Buffer): Promise<string> {
    const secret = await this.#keystore.decrypt(
      await this.#sealKey(),
      sealed.subarray(0, 12),
      sealed.subarray(12),
      sealAad(name, generation),
    );
    try {
      return createPrivateKey({ key: secret.expose(), format: "der", type: "pkcs8" })
        .export({ type: "pkcs8", format: "pem" })
        .toString();
    } finally {
      secret.destroy();
    }
  }
}

/** Binds a sealed key to its consumer and generation, so one can't be swapped for another. */
function sealAad(name: string, generation: number): Buffer {
  return Buffer.from(`custos:consumer-key:v1:${name}:${generation}`);
}

function checkFingerprint(value: unknown): string {
  if (typeof value !== "string" || !FINGERPRINT.test(value)) {
    throw new CustosError("invalid_request", "fingerprint must be 64 lowercase hex digits (SHA-256 of the DER)");
  }
  return value;
}

function stringList(value: unknown, field: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== "string") || value.length > 100) {
    throw new CustosError("invalid_request", `${field} must be a list of at most 100 strings`);
  }
  return value as string[];
}

/** Checks a consumer's definition against its role now, so a consumer that can't be issued is never created. */
function consumerRequest(role: Role, input: ConsumerInput): ConsumerRequest {
  if (input.commonName !== undefined && typeof input.commonName !== "string") {
    throw new CustosError("invalid_request", "commonName must be a string");
  }
  if (input.ttlSeconds !== undefined && typeof input.ttlSeconds !== "number") {
    throw new CustosError("invalid_request", "ttlSeconds must be a number");
  }
  const keyType = input.keyType ?? defaultKeyType(role);
  if (!isKeyType(keyType)) throw new CustosError("invalid_request", `unknown key type ${String(keyType)}`);
  checkKeyType(role, keyType);
  const names = checkNames(role, {
    ...(input.commonName === undefined ? {} : { commonName: input.commonName }),
    dnsNames: stringList(input.dnsNames, "dnsNames"),
    ipAddresses: stringList(input.ipAddresses, "ipAddresses"),
    uris: [],
  });
  return {
    commonName: names.commonName ?? null,
    dnsNames: names.dnsNames,
    ipAddresses: names.ipAddresses,
    ttlSeconds: checkTtl(role, input.ttlSeconds),
    keyType,
  };
}

function generationView(generation: number, cert: CertificateRecord): GenerationView {
  return { generation, serial: cert.serial, fingerprint: cert.fingerprint, notAfter: cert.notAfter };
}

/** The consumer with its open rotation marked complete at `now`. */
function completedAt(consumer: ConsumerRecord, now: Date): ConsumerRecord {
  const rotation = { ...(consumer.rotation as ConsumerRotation), completedAt: now.toISOString() };
  return { ...consumer, rotation, updatedAt: now.toISOString() };
}
