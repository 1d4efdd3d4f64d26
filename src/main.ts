/**
 * The composition root: the only place that picks concrete implementations
 * (PKCS#11 keystore, SQLite store) and wires the services to the API.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, resolve } from "node:path";
import type { FastifyInstance } from "fastify";
import { buildApp } from "./api/app.js";
import { AuditLog, auditEntry, INIT_ACTION, systemActor } from "./audit/index.js";
import { AuthService, buildInitialAdmin } from "./auth/index.js";
import { Broker } from "./broker/index.js";
import type { CustosConfig } from "./config/index.js";
import { CustosError } from "./errors/index.js";
import { replaceFiles, writeFileAtomic } from "./files/index.js";
import type { HsmKeyRef, Keystore } from "./hsm/index.js";
import { Pkcs11Keystore } from "./hsm/pkcs11/index.js";
import { KmsService } from "./kms/index.js";
import { createLogger, type Logger } from "./log/index.js";
import { Metrics } from "./metrics/index.js";
import {
  Authority,
  Consumers,
  defaultServerNames,
  Issuer,
  issueServerCertificate,
  type ServerTls,
  serverNeedsNew,
} from "./pki/index.js";
import { Platform } from "./platform/index.js";
import { Secret } from "./secret/index.js";
import { Secrets } from "./secrets/index.js";
import { SshCa } from "./ssh-ca/index.js";
import type { Store } from "./store/index.js";
import { lockForInit, type RestoreResult, restoreDatabase, SqliteStore } from "./store/sqlite/index.js";
import { VERSION } from "./version.js";

/**
 * The listener's TLS: 1.2 and 1.3 only, and under 1.2 only ECDHE with AEAD ciphers
 * (RFC 9325 4.2; Mozilla's "intermediate" list), where node's default still offers
 * CBC suites with SHA-1 MACs. TLS 1.3's suites are all AEAD already.
 */
const TLS_POLICY = {
  minVersion: "TLSv1.2",
  ciphers: [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
  ].join(":"),
  honorCipherOrder: true,
} as const;

/** Names of the settings `init` records. */
const S = {
  rootLabel: "hsm.rootKey.label",
  rootId: "hsm.rootKey.id",
  rootKcv: "hsm.rootKey.checkValue",
  auditHmacLabel: "audit.hmacKey.label",
  auditHmacId: "audit.hmacKey.id",
  auditCheckpointLabel: "audit.checkpointKey.label",
  auditCheckpointId: "audit.checkpointKey.id",
} as const;

export interface Services {
  readonly config: CustosConfig;
  readonly logger: Logger;
  readonly keystore: Keystore;
  readonly store: Store;
  readonly audit: AuditLog;
  readonly kms: KmsService;
  readonly auth: AuthService;
  readonly pki: Pki;
  readonly platform: Platform;
  readonly secrets: Secrets;
  readonly broker: Broker;
  readonly ssh: SshCa;
  close(): Promise<void>;
}

export interface Pki {
  readonly authority: Authority;
  readonly issuer: Issuer;
  readonly consumers: Consumers;
}

/** Where clients reach the PKI's public endpoints: the configured base URL, or this listener. */
function pkiBaseUrl(config: CustosConfig): string {
  if (config.pki.baseUrl) return config.pki.baseUrl;
  const { host, port } = config.listen;
  const name = host === "0.0.0.0" || host === "::" ? hostname() : host.includes(":") ? `[${host}]` : host;
  return `${config.tls.insecureHttp ? "http" : "https"}://${name}:${port}`;
}

function openPki(config: CustosConfig, keystore: Keystore, store: Store): Pki {
  const authority = new Authority({
    keystore,
    store,
    caAlgorithm: config.pki.caAlgorithm,
    baseUrl: pkiBaseUrl(config),
    crlValiditySeconds: config.pki.crlValiditySeconds,
    ocspValiditySeconds: config.pki.ocspValiditySeconds,
  });
  const issuer = new Issuer({ store, authority });
  const consumers = new Consumers({
    store,
    keystore,
    issuer,
    authority,
    agentStaleSeconds: config.pki.agentStaleSeconds,
  });
  return { authority, issuer, consumers };
}

/** SoftHSM finds its token directory through SOFTHSM2_CONF; the dev set-up keeps one under the data dir. */
function useDevSoftHsmConf(config: CustosConfig): void {
  const devConf = resolve(config.dataDir, "softhsm2.conf");
  if (!process.env.SOFTHSM2_CONF && existsSync(devConf)) process.env.SOFTHSM2_CONF = devConf;
}

/**
 * The HSM PIN, from its variable when set (an explicit choice wins over the default
 * file), else from its file; never from argv, never logged.
 */
function readPin(config: CustosConfig): Secret {
  const { pinFile, pinEnv } = config.hsm;
  const fromEnv = process.env[pinEnv];
  if (fromEnv) return Secret.fromString(fromEnv);
  if (pinFile && existsSync(pinFile)) {
    let pin: Buffer;
    try {
      pin = readFileSync(pinFile);
    } catch (e) {
      // A directory or a file we may not read is the configuration's fault, as a
      // missing one is: name the file and the setting, not node's bare EISDIR.
      const code = (e as { code?: unknown }).code;
      throw new CustosError(
        "invalid_request",
        `cannot read the HSM PIN file ${pinFile} (hsm.pinFile, CUSTOS_HSM_PIN_FILE): ${typeof code === "string" ? code : "read failed"}; fix it or set ${pinEnv}`,
        { cause: e },
      );
    }
    const end = pin.length - (pin.at(-1) === 0x0a ? 1 : 0);
    const secret = Secret.copy(pin.subarray(0, end));
    pin.fill(0);
    return secret;
  }
  throw new CustosError("invalid_request", `no HSM PIN: create ${pinFile ?? "a PIN file"} or set ${pinEnv}`);
}

async function openKeystore(config: CustosConfig, logger: Logger): Promise<Keystore> {
  useDevSoftHsmConf(config);
  const pin = readPin(config);
  try {
    return await Pkcs11Keystore.open({
      modulePath: config.hsm.modulePath,
      tokenLabel: config.hsm.tokenLabel,
      pin,
      poolSize: config.hsm.poolSize,
      operationTimeoutMs: config.hsm.operationTimeoutMs,
      logger,
    });
  } finally {
    pin.destroy();
  }
}

async function requireSetting(store: Store, name: string): Promise<string> {
  const value = await store.getSetting(name);
  if (value === undefined) throw new CustosError("internal", `setting ${name} is missing from the store`);
  return value;
}

async function settingRef(store: Store, label: string, id: string): Promise<HsmKeyRef> {
  return { label: await requireSetting(store, label), id: await requireSetting(store, id) };
}

/** The audit HMAC and checkpoint keys this store was initialised with. */
async function auditKeys(store: Store): Promise<{ hmacKey: HsmKeyRef; checkpointKey: HsmKeyRef }> {
  return {
    hmacKey: await settingRef(store, S.auditHmacLabel, S.auditHmacId),
    checkpointKey: await settingRef(store, S.auditCheckpointLabel, S.auditCheckpointId),
  };
}

/**
 * Refuses to run against an HSM whose root key is not the one this store was
 * initialised with, and warns when that key predates hardened root keys.
 */
async function checkRootKey(keystore: Keystore, store: Store, logger: Logger): Promise<void> {
  const expected = await requireSetting(store, S.rootKcv);
  const root = await keystore.findRootKey();
  if (!root) {
    throw new CustosError("root_key_mismatch", "the HSM token holds no Custos root key; is this the right token?");
  }
  if (root.checkValue !== expected) {
    throw new CustosError(
      "root_key_mismatch",
      `the HSM root key (check value ${root.checkValue}) is not the one this store was initialised with (${expected})`,
    );
  }
  if (!root.hardened) {
    logger.warn(
      { rootKey: { label: root.label, id: root.id } },
      "hsm: the root key was made before root keys were hardened: it can be modified, and a session logged in " +
        "with the HSM PIN can unwrap key versions with it into keys it can read (see the README's Known limits)",
    );
  }
}

/** Opens the keystore and store, checks the root key, and builds the services. */
export async function openServices(config: CustosConfig, logger: Logger = createLogger()): Promise<Services> {
  const keystore = await openKeystore(config, logger);
  let store: Store | undefined;
  try {
    store = await SqliteStore.open(config.store.path, { exclusive: true });
    if (!(await store.isInitialized())) {
      throw new CustosError("not_initialized", "Custos is not initialised: run `custos init` first");
    }
    await checkRootKey(keystore, store, logger);
    // Keys the audit chain before the first audited write below.
    const audit = await AuditLog.open({
      store,
      keystore,
      ...(await auditKeys(store)),
      checkpointEvery: config.audit.checkpointEvery,
      checkpointIntervalMs: config.audit.checkpointIntervalMs,
      logger,
    });
    const kms = new KmsService({
      keystore,
      store,
      audit,
      minDestructionWaitSeconds: config.kms.minDestructionWaitSeconds,
    });
    const auth = new AuthService({
      store,
      sessionTtlSeconds: config.auth.sessionTtlSeconds,
      sessionMaxTtlSeconds: config.auth.sessionMaxTtlSeconds,
    });
    const pki = openPki(config, keystore, store);
    // Creates the CA hierarchy on installs made before the PKI existed; loads it otherwise.
    await pki.authority.ensure(systemActor("pki-init"));
    const platform = new Platform({ store, kms });
    const secrets = new Secrets({ store, kms, platform, audit });
    const broker = new Broker({
      store,
      keystore,
      auth,
      platform,
      secrets,
      issuer: pki.issuer,
      authority: pki.authority,
      config: config.broker,
      baseUrl: pkiBaseUrl(config),
    });
    // The JWT signing key in the HSM and the built-in platform-agent policy.
    await broker.ensure();
    platform.useInstanceCounts((apps) => broker.instanceCounts(apps.map((app) => app.id)));
    const opened = store;
    const ssh = new SshCa({
      keystore,
      store,
      caAlgorithm: config.ssh.caAlgorithm,
      knownHostsPattern: config.ssh.knownHostsPattern,
    });
    // The user and host CA keys in the HSM, the built-in roles and the first KRL.
    await ssh.ensure(systemActor("ssh-init"));
    return {
      config,
      logger,
      keystore,
      store: opened,
      audit,
      kms,
      auth,
      pki,
      platform,
      secrets,
      broker,
      ssh,
      async close() {
        await audit.stop();
        await opened.close();
        await keystore.close();
      },
    };
  } catch (e) {
    await store?.close();
    await keystore.close();
    throw e;
  }
}

/**
 * Writes one of Custos's own files (token, CA) durably, making its directory if
 * needed; a file that already holds `data` is left alone (the CA file is checked at
 * every renewal check).
 */
async function writeOwnFile(path: string, data: string, mode: number): Promise<void> {
  if (existsSync(path) && readFileSync(path, "utf8") === data) return;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  await writeFileAtomic(path, data, mode);
}

export interface InitResult {
  readonly created: boolean;
  readonly adminTokenFile: string;
  readonly caCertFile: string;
}

/**
 * `custos init`: root key in the HSM, audit keys, the first admin and their token —
 * recorded in one atomic store write — then the PKI's root and intermediate CAs.
 * Idempotent: on an initialised store it checks the root key, completes the PKI if
 * an earlier run (or an older version) left none, and re-writes the CA file. Inits on
 * one store take turns (`lockForInit`): the second finds the first's work done.
 */
export async function initialize(config: CustosConfig, options: { adminName: string }): Promise<InitResult> {
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const adminTokenFile = resolve(config.dataDir, "admin.token");
  const caCertFile = resolve(config.tls.dir, "ca.pem");
  // Taken before the keystore opens, so that a second init's HSM view starts after the first's keys.
  const initLock = lockForInit(config.store.path);
  try {
    return await initializeLocked(config, options.adminName, adminTokenFile, caCertFile);
  } finally {
    initLock.release();
  }
}

async function initializeLocked(
  config: CustosConfig,
  adminName: string,
  adminTokenFile: string,
  caCertFile: string,
): Promise<InitResult> {
  const logger = createLogger();
  const keystore = await openKeystore(config, logger);
  const store = await SqliteStore.open(config.store.path);
  try {
    const writeCa = async (): Promise<void> => {
      const pki = openPki(config, keystore, store);
      await pki.authority.ensure(systemActor("init"));
      await writeOwnFile(caCertFile, pki.authority.root().certPem, 0o644);
    };
    if (await store.isInitialized()) {
      await checkRootKey(keystore, store, logger);
      // writeCa may audit (a PKI made on this run): the chain is keyed first.
      await AuditLog.open({
        store,
        keystore,
        ...(await auditKeys(store)),
      });
      await writeCa();
      return { created: false, adminTokenFile, caCertFile };
    }
    // HSM keys left by an init that died before its store write are reused, not duplicated.
    const root = (await keystore.findRootKey()) ?? (await keystore.createRootKey());
    const { hmacKey, checkpointKey } = await AuditLog.provisionKeys(keystore);
    const { policies, admin, adminToken, token } = await buildInitialAdmin({ name: adminName });
    try {
      // The token file is written first: if the store write then fails, a rerun replaces it.
      await writeOwnFile(adminTokenFile, `${token.exposeText()}\n`, 0o600);
    } finally {
      token.destroy();
    }
    const settings = {
      [S.rootLabel]: root.label,
      [S.rootId]: root.id,
      [S.rootKcv]: root.checkValue,
      [S.auditHmacLabel]: hmacKey.label,
      [S.auditHmacId]: hmacKey.id,
      [S.auditCheckpointLabel]: checkpointKey.label,
      [S.auditCheckpointId]: checkpointKey.id,
    };
    // Keyed from the first record on: the init record too.
    await AuditLog.open({ store, keystore, hmacKey, checkpointKey });
    await store.initialize(
      { settings, policies, admin, adminToken },
      auditEntry(systemActor("init"), INIT_ACTION, "custos", {
        admin: admin.name,
        rootKey: { label: root.label, id: root.id, checkValue: root.checkValue },
      }),
    );
    await writeCa();
    return { created: true, adminTokenFile, caCertFile };
  } finally {
    await store.close();
    await keystore.close();
  }
}

/**
 * `custos restore`: installs a copy made by `custos backup` (see `restoreDatabase`),
 * with the server stopped. Before the copy replaces anything it is checked against
 * this token's root key, and the restore is recorded at the end of its audit log with
 * a checkpoint signed at that record (see audit/restore.ts), so the log says which
 * records the HSM vouched for were lost rather than reading as cut short.
 */
export async function restore(config: CustosConfig, backupFile: string): Promise<RestoreResult> {
  const logger = createLogger();
  const keystore = await openKeystore(config, logger);
  try {
    return await restoreDatabase(config.store.path, backupFile, async (copy, facts) => {
      const store = await SqliteStore.open(copy);
      try {
        await checkRootKey(keystore, store, logger);
        const audit = await AuditLog.open({ store, keystore, ...(await auditKeys(store)), logger });
        const { seq } = await audit.recordRestore(systemActor("restore"), {
          backup: { sha256: facts.backupSha256, newestSeq: facts.backupSeq },
          replaced: facts.replaced,
        });
        return seq;
      } finally {
        await store.close();
      }
    });
  } finally {
    await keystore.close();
  }
}

/**
 * The listener's certificate: the admin's own files, or one from the PKI (leaf and
 * intermediate), issued anew when two thirds of its life are gone, when it came
 * from a CA the PKI no longer has (the core's bootstrap CA, on a migrated install),
 * when it was revoked, or when server.key is not its key.
 */
async function serverTls(services: Services): Promise<ServerTls | { cert: string; key: string }> {
  const { config, store, pki } = services;
  if (config.tls.certFile && config.tls.keyFile) {
    const own = { cert: readFileSync(config.tls.certFile, "utf8"), key: readFileSync(config.tls.keyFile, "utf8") };
    checkOwnPair(config.tls.certFile, config.tls.keyFile, own, services.logger);
    return own;
  }
  const certFile = resolve(config.tls.dir, "server.pem");
  const keyFile = resolve(config.tls.dir, "server.key");
  await writeOwnFile(resolve(config.tls.dir, "ca.pem"), pki.authority.root().certPem, 0o644);
  if (existsSync(certFile) && existsSync(keyFile)) {
    const cert = readFileSync(certFile, "utf8");
    if (!(await serverNeedsNew(cert, pki.authority, pki.issuer))) {
      const key = readFileSync(keyFile, "utf8");
      // A renewal cut short by a crash between its two renames leaves one file new.
      if (keyMatches(cert, key)) return { cert, key };
      services.logger.warn("server.key does not match server.pem: issuing a new pair");
    }
  }
  const issued = await issueServerCertificate(
    pki.issuer,
    store,
    systemActor("server-certificate"),
    defaultServerNames(config.listen.host),
    config.tls.serverCertTtlSeconds,
  );
  // After an error the old pair is back in place; only a crash between the two
  // renames can leave a mixed pair, which the check above replaces at the next start.
  await replaceFiles([
    { path: keyFile, data: issued.key, mode: 0o600 },
    { path: certFile, data: issued.cert, mode: 0o644 },
  ]);
  services.logger.info({ notAfter: issued.notAfter.toISOString() }, "issued the server certificate");
  return issued;
}

/**
 * The admin's own pair, checked before node gets it: node refuses a key that is not
 * the certificate's only with a bare OpenSSL error, which reads as an internal one.
 * An expired (or not yet valid) certificate is served, with a warning: refusing it
 * would keep the server down while the operator replaces it.
 */
function checkOwnPair(certFile: string, keyFile: string, own: { cert: string; key: string }, logger: Logger): void {
  if (!keyMatches(own.cert, own.key)) {
    throw new CustosError(
      "invalid_request",
      `the key in ${keyFile} (tls.keyFile, CUSTOS_TLS_KEY) is not the private key of the certificate in ${certFile} (tls.certFile, CUSTOS_TLS_CERT), or one of them is not PEM`,
    );
  }
  const cert = new X509Certificate(own.cert);
  const now = Date.now();
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  if (notAfter.getTime() < now) {
    logger.warn(
      { certFile, notAfter: notAfter.toISOString() },
      `the TLS certificate in ${certFile} expired at ${notAfter.toISOString()}: serving it anyway; replace it`,
    );
  } else if (notBefore.getTime() > now) {
    logger.warn(
      { certFile, notBefore: notBefore.toISOString() },
      `the TLS certificate in ${certFile} is not valid before ${notBefore.toISOString()}: serving it anyway`,
    );
  }
}

/** Whether `keyPem` is the private key of the first certificate in `certPem`. */
function keyMatches(certPem: string, keyPem: string): boolean {
  try {
    return new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/**
 * Instances authenticate to the broker with their identity certificates (mutual
 * TLS). Asking for a client certificate is harmless to every other client: one
 * that sends none is served as before, and only the broker's instance routes look
 * at what was sent. The PKI's root and intermediates are the trust anchors.
 */
function clientCertificates(services: Services): { requestCert: true; rejectUnauthorized: false; ca: string[] } {
  const { authority } = services.pki;
  return {
    requestCert: true,
    rejectUnauthorized: false,
    ca: authority.issuers().map((ca) => authority.issuer(ca.id).certPem),
  };
}

export interface RunningServer {
  readonly address: string;
  close(): Promise<void>;
}

/** Starts listening; an address that can't be had is the configuration's fault, said so. */
async function listen(app: FastifyInstance, at: CustosConfig["listen"]): Promise<string> {
  try {
    return await app.listen({ host: at.host, port: at.port });
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== "string" || !LISTEN_ERRORS.has(code)) throw e;
    throw new CustosError("invalid_request", `cannot listen on ${at.host}:${at.port}: ${code}`, { cause: e });
  }
}

/** What the system says when the listen address is in use, not ours, or not a name it knows. */
const LISTEN_ERRORS = new Set(["EADDRINUSE", "EADDRNOTAVAIL", "EACCES", "ENOTFOUND", "EAI_AGAIN", "EINVAL"]);

/** `custos server`: opens everything and serves the API until closed. */
export async function serve(config: CustosConfig): Promise<RunningServer> {
  const logger = createLogger();
  const services = await openServices(config, logger);
  const { kms, audit, keystore } = services;
  const timers: NodeJS.Timeout[] = [];
  try {
    // CRLs whose nextUpdate passed (or is near) while the server was down are re-signed
    // before the first request, not at the scheduler's first tick. A failure is no
    // reason not to serve everything else: the scheduler tries again.
    await services.pki.authority
      .refreshCrls()
      .catch((err: unknown) => logger.warn({ err }, "CRL refresh at start failed; will retry"));
    const tls = config.tls.insecureHttp ? undefined : await serverTls(services);
    if (!tls) logger.warn("serving plain HTTP (tls.insecureHttp): only behind a proxy that terminates TLS");
    const metrics = new Metrics(VERSION);
    /** The certificate the listener serves, as renewal replaces it; none on plain HTTP. */
    let serving = tls?.cert;
    metrics.gauge(
      "custos_tls_not_after_timestamp_seconds",
      "When the certificate the HTTPS listener serves now expires (Unix seconds).",
      [],
      () => (serving === undefined ? [] : [[{}, Date.parse(new X509Certificate(serving).validTo) / 1000]]),
    );
    const app = await buildApp({
      kms,
      auth: services.auth,
      audit,
      pki: services.pki,
      platform: services.platform,
      secrets: services.secrets,
      broker: services.broker,
      ssh: services.ssh,
      store: services.store,
      hsmHealth: () => keystore.health(),
      metrics,
      logger,
      version: VERSION,
      bodyLimitBytes: config.api.bodyLimitBytes,
      loginAttemptsPerMinute: config.auth.loginAttemptsPerMinute,
      ...(tls ? { https: { ...tls, ...clientCertificates(services), ...TLS_POLICY } } : {}),
    });
    const address = await listen(app, config.listen);
    audit.start();

    /** A background job every `ms`: its runs are counted, a failure logged and tried again next time. */
    const every = (ms: number, job: string, what: string, run: () => Promise<unknown>): void => {
      const tick = metrics.job(job, run, (err) => logger.warn({ err }, `${what} failed; will retry`));
      timers.push(setInterval(() => void tick(), ms));
    };
    every(config.kms.schedulerIntervalMs, "kms-schedule", "scheduled key work", () => kms.runDue());
    every(config.kms.schedulerIntervalMs, "crl-refresh", "CRL refresh", () => services.pki.authority.refreshCrls());
    every(config.broker.sweepSeconds * 1000, "broker-sweep", "broker lease sweep", () => services.broker.sweep());
    if (tls && !config.tls.certFile) {
      // Renew the listener's certificate in place: new connections get it, no restart.
      const renew = async (): Promise<void> => {
        const fresh = await serverTls(services);
        if (fresh.cert === serving) return;
        const server = app.server as unknown as import("node:tls").Server;
        server.setSecureContext({
          cert: fresh.cert,
          key: fresh.key,
          ca: clientCertificates(services).ca,
          ...TLS_POLICY,
        });
        serving = fresh.cert;
      };
      every(config.tls.renewCheckSeconds * 1000, "tls-renewal", "server certificate renewal", renew);
    }
    for (const t of timers) t.unref();
    logger.info({ address, tls: Boolean(tls) }, "custos is serving");
    return {
      address,
      async close() {
        for (const t of timers) clearInterval(t);
        await app.close();
        await services.close();
      },
    };
  } catch (e) {
    for (const t of timers) clearInterval(t);
    await services.close();
    throw e;
  }
}
