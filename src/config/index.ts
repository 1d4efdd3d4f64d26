import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { CustosError } from "../errors/index.js";

/**
 * The one validated configuration. Sources, later winning: built-in defaults (the
 * embedded development set-up under `var/`), a JSON file (`--config`, or
 * `CUSTOS_CONFIG`, or `var/custos.json` when present), then `CUSTOS_*` variables.
 * The HSM PIN is never part of it: only where to read it from.
 */
export interface CustosConfig {
  readonly dataDir: string;
  readonly listen: { readonly host: string; readonly port: number };
  readonly tls: {
    /** Serve plain HTTP. Only with an explicit opt-in; never the default. */
    readonly insecureHttp: boolean;
    /** An admin's own certificate and key (PEM files); null to use the one Custos issues. */
    readonly certFile: string | null;
    readonly keyFile: string | null;
    /** Where Custos writes its CA and server certificate. */
    readonly dir: string;
    /** Lifetime of the server certificate Custos issues itself; renewed when a third is left. */
    readonly serverCertTtlSeconds: number;
    /** How often the server checks whether its certificate is due for renewal. */
    readonly renewCheckSeconds: number;
  };
  readonly hsm: {
    readonly modulePath: string;
    readonly tokenLabel: string;
    /** File holding the user PIN; when null the PIN comes from the `pinEnv` variable. */
    readonly pinFile: string | null;
    readonly pinEnv: string;
    readonly poolSize: number;
    readonly operationTimeoutMs: number;
  };
  readonly store: { readonly path: string };
  readonly audit: { readonly checkpointEvery: number; readonly checkpointIntervalMs: number };
  readonly auth: {
    readonly sessionTtlSeconds: number;
    /** How long after login renewals may keep a session (at least `sessionTtlSeconds`). */
    readonly sessionMaxTtlSeconds: number;
    readonly loginAttemptsPerMinute: number;
  };
  readonly api: { readonly bodyLimitBytes: number };
  readonly kms: { readonly minDestructionWaitSeconds: number; readonly schedulerIntervalMs: number };
  readonly pki: {
    /** Algorithm of new CA keys. */
    readonly caAlgorithm: "ecdsa-p256" | "rsa-3072";
    /** Where clients reach the CRL, OCSP and CA certificates (put in every certificate); null: the listener. */
    readonly baseUrl: string | null;
    readonly crlValiditySeconds: number;
    readonly ocspValiditySeconds: number;
    /** An agent silent this long no longer holds back a rotation. */
    readonly agentStaleSeconds: number;
  };
  readonly broker: {
    /** The SPIFFE trust domain of identity certificates. */
    readonly trustDomain: string;
    readonly identityTtlSeconds: number;
    readonly jwtTtlSeconds: number;
    /** The JWT `iss`; null: the PKI base URL. */
    readonly jwtIssuer: string | null;
    readonly jwtAudience: readonly string[];
    /** Lifetime of a bootstrap token. */
    readonly bootstrapTokenTtlSeconds: number;
    /** Lease of an instance when its agent names none. */
    readonly defaultLeaseSeconds: number;
    /** How often lapsed leases are looked for. */
    readonly sweepSeconds: number;
  };
  readonly ssh: {
    /** Algorithm of new SSH CA keys. */
    readonly caAlgorithm: "ecdsa-p256" | "ed25519";
    /** The hosts the `@cert-authority` known_hosts line covers. */
    readonly knownHostsPattern: string;
  };
}

type Json = Record<string, unknown>;

function defaults(dataDir: string): CustosConfig {
  return {
    dataDir,
    listen: { host: "127.0.0.1", port: 8443 },
    tls: {
      insecureHttp: false,
      certFile: null,
      keyFile: null,
      dir: resolve(dataDir, "tls"),
      serverCertTtlSeconds: 30 * 86_400,
      renewCheckSeconds: 3600,
    },
    hsm: {
      modulePath: "/usr/lib/softhsm/libsofthsm2.so",
      tokenLabel: "custos-dev",
      pinFile: resolve(dataDir, "hsm.pin"),
      pinEnv: "CUSTOS_HSM_PIN",
      poolSize: 4,
      operationTimeoutMs: 5000,
    },
    store: { path: resolve(dataDir, "custos.db") },
    audit: { checkpointEvery: 1000, checkpointIntervalMs: 60_000 },
    auth: { sessionTtlSeconds: 3600, sessionMaxTtlSeconds: 43_200, loginAttemptsPerMinute: 10 },
    api: { bodyLimitBytes: 1024 * 1024 },
    kms: { minDestructionWaitSeconds: 86_400, schedulerIntervalMs: 30_000 },
    pki: {
      caAlgorithm: "ecdsa-p256",
      baseUrl: null,
      crlValiditySeconds: 7 * 86_400,
      ocspValiditySeconds: 3600,
      agentStaleSeconds: 600,
    },
    broker: {
      trustDomain: "custos",
      identityTtlSeconds: 3600,
      jwtTtlSeconds: 600,
      jwtIssuer: null,
      jwtAudience: ["custos"],
      bootstrapTokenTtlSeconds: 300,
      defaultLeaseSeconds: 86_400,
      sweepSeconds: 10,
    },
    ssh: { caAlgorithm: "ecdsa-p256", knownHostsPattern: "*" },
  };
}

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", `config: ${message}`);
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The settings that may be null (each a string when set); every other one has its default's type. */
const NULLABLE = new Set(["tls.certFile", "tls.keyFile", "hsm.pinFile", "pki.baseUrl", "broker.jwtIssuer"]);

/** Deep-merges `over` into `base`, refusing keys and types `base` doesn't have. */
function merge(base: Json, over: Json, path: string): Json {
  const out: Json = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const where = path ? `${path}.${key}` : key;
    if (!(key in base)) throw invalid(`unknown setting "${where}"`);
    const current = base[key];
    const type = NULLABLE.has(where) ? "string" : typeof current;
    if (isObject(current)) {
      if (!isObject(value)) throw invalid(`"${where}" must be an object`);
      out[key] = merge(current, value, where);
    } else if (value === null ? !NULLABLE.has(where) : typeof value !== type) {
      throw invalid(`"${where}" must be a ${type}${NULLABLE.has(where) ? " or null" : ""}`);
    } else {
      out[key] = value;
    }
  }
  return out;
}

function positiveInt(name: string, value: number, max = Number.MAX_SAFE_INTEGER, min = 1): void {
  if (!Number.isInteger(value) || value < min || value > max)
    throw invalid(`"${name}" must be an integer in ${min}..${max}`);
}

function fromEnv(env: NodeJS.ProcessEnv): Json {
  const over: Record<string, Json> = {};
  const set = (section: string, key: string, value: unknown): void => {
    over[section] = { ...over[section], [key]: value };
  };
  if (env.CUSTOS_LISTEN) {
    // An IPv6 address in brackets (RFC 3986 3.2.2), or host:port with the port after the last colon.
    const m = /^\[([^\]]+)\]:(\d+)$/.exec(env.CUSTOS_LISTEN) ?? /^([^[\]]+):(\d+)$/.exec(env.CUSTOS_LISTEN);
    if (!m?.[1] || !m[2]) throw invalid("CUSTOS_LISTEN must be host:port or [ipv6]:port");
    set("listen", "host", m[1]);
    set("listen", "port", Number(m[2]));
  }
  if (env.CUSTOS_HSM_MODULE) set("hsm", "modulePath", env.CUSTOS_HSM_MODULE);
  if (env.CUSTOS_HSM_TOKEN) set("hsm", "tokenLabel", env.CUSTOS_HSM_TOKEN);
  if (env.CUSTOS_HSM_PIN_FILE) set("hsm", "pinFile", env.CUSTOS_HSM_PIN_FILE);
  if (env.CUSTOS_INSECURE_HTTP === "1") set("tls", "insecureHttp", true);
  if (env.CUSTOS_TLS_CERT) set("tls", "certFile", env.CUSTOS_TLS_CERT);
  if (env.CUSTOS_TLS_KEY) set("tls", "keyFile", env.CUSTOS_TLS_KEY);
  return over;
}

export interface LoadConfigOptions {
  configFile?: string;
  env?: NodeJS.ProcessEnv;
}

/** Loads and validates the configuration; `invalid_request` names the bad setting. */
export function loadConfig(options: LoadConfigOptions = {}): CustosConfig {
  const env = options.env ?? process.env;
  const dataDir = resolve(env.CUSTOS_DATA_DIR ?? "var");
  let config = defaults(dataDir) as unknown as Json;

  const file = options.configFile ?? env.CUSTOS_CONFIG ?? resolve(dataDir, "custos.json");
  const explicit = options.configFile !== undefined || env.CUSTOS_CONFIG !== undefined;
  if (existsSync(file)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, "utf8"));
    } catch (cause) {
      throw new CustosError("invalid_request", `config: ${file} is not valid JSON`, { cause });
    }
    if (!isObject(parsed)) throw invalid(`${file} must hold a JSON object`);
    const { dataDir: _ignored, ...rest } = parsed;
    config = merge(config, rest, "");
  } else if (explicit) {
    throw invalid(`config file ${file} not found`);
  }
  config = merge(config, fromEnv(env), "");

  const c = config as unknown as CustosConfig;
  positiveInt("listen.port", c.listen.port, 65535, 0);
  positiveInt("hsm.poolSize", c.hsm.poolSize, 64);
  positiveInt("hsm.operationTimeoutMs", c.hsm.operationTimeoutMs, 600_000, 100);
  positiveInt("audit.checkpointEvery", c.audit.checkpointEvery);
  positiveInt("audit.checkpointIntervalMs", c.audit.checkpointIntervalMs, Number.MAX_SAFE_INTEGER, 100);
  positiveInt("auth.sessionTtlSeconds", c.auth.sessionTtlSeconds, 30 * 86_400, 60);
  // A session lasting longer than 12 hours needs a maximum of its own: at least its lifetime.
  positiveInt("auth.sessionMaxTtlSeconds", c.auth.sessionMaxTtlSeconds, 30 * 86_400, c.auth.sessionTtlSeconds);
  positiveInt("auth.loginAttemptsPerMinute", c.auth.loginAttemptsPerMinute, 10_000);
  positiveInt("api.bodyLimitBytes", c.api.bodyLimitBytes, 64 * 1024 * 1024, 1024);
  positiveInt("kms.minDestructionWaitSeconds", c.kms.minDestructionWaitSeconds, 365 * 86_400, 0);
  positiveInt("kms.schedulerIntervalMs", c.kms.schedulerIntervalMs, Number.MAX_SAFE_INTEGER, 100);
  positiveInt("tls.serverCertTtlSeconds", c.tls.serverCertTtlSeconds, 397 * 86_400, 10);
  positiveInt("tls.renewCheckSeconds", c.tls.renewCheckSeconds, 86_400);
  positiveInt("pki.crlValiditySeconds", c.pki.crlValiditySeconds, 365 * 86_400, 60);
  positiveInt("pki.ocspValiditySeconds", c.pki.ocspValiditySeconds, 7 * 86_400, 60);
  positiveInt("pki.agentStaleSeconds", c.pki.agentStaleSeconds, 30 * 86_400, 5);
  if (c.pki.caAlgorithm !== "ecdsa-p256" && c.pki.caAlgorithm !== "rsa-3072") {
    throw invalid('"pki.caAlgorithm" must be "ecdsa-p256" or "rsa-3072"');
  }
  if (c.pki.baseUrl !== null && !/^https?:\/\/[^/]+$/.test(c.pki.baseUrl)) {
    throw invalid('"pki.baseUrl" must be a URL with no path, like https://custos.example:8443');
  }
  positiveInt("broker.identityTtlSeconds", c.broker.identityTtlSeconds, 30 * 86_400, 60);
  positiveInt("broker.jwtTtlSeconds", c.broker.jwtTtlSeconds, 86_400, 30);
  positiveInt("broker.bootstrapTokenTtlSeconds", c.broker.bootstrapTokenTtlSeconds, 86_400, 10);
  positiveInt("broker.defaultLeaseSeconds", c.broker.defaultLeaseSeconds, 365 * 86_400, 10);
  positiveInt("broker.sweepSeconds", c.broker.sweepSeconds, 86_400, 1);
  // At most 189 characters: an instance id (63) and a dot before it stay within a DNS name's 253.
  if (!/^[a-z0-9]([a-z0-9.-]{0,187}[a-z0-9])?$/.test(c.broker.trustDomain)) {
    throw invalid('"broker.trustDomain" must be a lower-case DNS name of at most 189 characters, like custos');
  }
  if (
    !Array.isArray(c.broker.jwtAudience) ||
    c.broker.jwtAudience.length === 0 ||
    !c.broker.jwtAudience.every((a) => typeof a === "string" && a.length > 0 && a.length <= 256)
  ) {
    throw invalid('"broker.jwtAudience" must be a non-empty list of strings');
  }
  if (c.ssh.caAlgorithm !== "ecdsa-p256" && c.ssh.caAlgorithm !== "ed25519") {
    throw invalid('"ssh.caAlgorithm" must be "ecdsa-p256" or "ed25519"');
  }
  // A known_hosts host pattern list: no spaces (the line's separator), no newlines.
  if (!/^[\x21-\x7e]{1,1024}$/.test(c.ssh.knownHostsPattern)) {
    throw invalid('"ssh.knownHostsPattern" must be a known_hosts pattern list without spaces, like * or *.example');
  }
  if ((c.tls.certFile === null) !== (c.tls.keyFile === null)) {
    throw invalid('"tls.certFile" and "tls.keyFile" go together');
  }
  return c;
}
