/**
 * A client configured by the environment, the way the `custos` command and other
 * tools on the same host find the API: `CUSTOS_ADDR`, `CUSTOS_TOKEN` or
 * `CUSTOS_TOKEN_FILE`, `CUSTOS_CACERT`.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { errnoOrMessage } from "../errors/index.js";
import { Secret } from "../secret/index.js";
import { configError } from "./errors.js";
import { type ClientOptions, CustosClient, DEFAULT_ADDR } from "./http.js";

/** What the environment doesn't say: timeout and retry policy. */
export type EnvClientOptions = Omit<ClientOptions, "address" | "token" | "ca">;

/**
 * Builds a client from the environment: `CUSTOS_ADDR` (default https://127.0.0.1:8443),
 * `CUSTOS_TOKEN` or else the file named by `CUSTOS_TOKEN_FILE` (whitespace trimmed),
 * and `CUSTOS_CACERT` (a PEM file to trust).
 * @throws ClientError `invalid_config` for unusable settings.
 */
export function clientFromEnv(env: NodeJS.ProcessEnv, options: EnvClientOptions = {}): CustosClient {
  const address = nonEmpty(env.CUSTOS_ADDR) ?? DEFAULT_ADDR;
  const ca = caFromEnv(env);
  const token = tokenFromEnv(env);
  try {
    return new CustosClient({ ...options, address, token, ca });
  } catch (e) {
    token?.destroy();
    throw e;
  }
}

/**
 * The bearer token from `CUSTOS_TOKEN` or `CUSTOS_TOKEN_FILE`, or undefined when neither is set.
 * @throws ClientError `invalid_config` when the file can't be read or is empty.
 */
export function tokenFromEnv(env: NodeJS.ProcessEnv): Secret | undefined {
  const inline = env.CUSTOS_TOKEN?.trim();
  if (inline) return Secret.fromString(checkTokenText(inline, "CUSTOS_TOKEN"));
  const file = nonEmpty(env.CUSTOS_TOKEN_FILE);
  if (file === undefined) return undefined;
  let raw: Buffer;
  try {
    raw = readFileSync(file);
  } catch (cause) {
    throw configError(`cannot read CUSTOS_TOKEN_FILE ${file}: ${errnoOrMessage(cause)}`, cause);
  }
  try {
    const text = raw.toString("utf8").trim();
    if (text.length === 0) throw configError(`CUSTOS_TOKEN_FILE ${file} is empty`);
    return Secret.fromString(checkTokenText(text, `CUSTOS_TOKEN_FILE ${file}`));
  } finally {
    raw.fill(0);
  }
}

/**
 * The PEM certificates of `CUSTOS_CACERT`, or undefined when it is not set.
 * @throws ClientError `invalid_config` when the file can't be read or a certificate in it doesn't parse.
 */
export function caFromEnv(env: NodeJS.ProcessEnv): Buffer | undefined {
  const file = nonEmpty(env.CUSTOS_CACERT);
  if (file === undefined) return undefined;
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (cause) {
    throw configError(`cannot read CUSTOS_CACERT ${file}: ${errnoOrMessage(cause)}`, cause);
  }
  // Every certificate must parse: a broken one would surface later as a TLS failure
  // against the server, naming neither the file nor the setting.
  const blocks = pem.toString("latin1").match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw configError(`CUSTOS_CACERT ${file} holds no PEM certificate`);
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch (cause) {
      throw configError(`CUSTOS_CACERT ${file} holds a certificate that does not parse`, cause);
    }
  }
  return pem;
}

/**
 * A bearer token travels in a header: visible ASCII only (RFC 6750 b64token is
 * narrower still). Anything else, a second line included, is a setting to fix.
 */
function checkTokenText(text: string, source: string): string {
  if (!/^[\x21-\x7e]+$/.test(text)) {
    throw configError(`${source} does not hold one token: only visible ASCII characters, on one line`);
  }
  return text;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}
