/**
 * `custos/broker-client`: credentials for an app that fetches them in process
 * rather than through `custos run` (docs/broker.md).
 *
 * ```ts
 * const creds = await bootstrap({ address, ca, token: process.env.CUSTOS_BOOTSTRAP_TOKEN!, instance });
 * const session = new BrokerSession({ address, ca }, creds);
 * const db = creds.secrets.find((s) => s.name === "db/password")?.value;
 * // later: await session.renew() at creds.identity.renewAt; session.secrets(); session.close()
 * ```
 *
 * Self-contained: it uses only node: modules, @peculiar/x509 (for the CSR) and
 * nothing else of Custos, so an app can take it without the server's dependencies.
 */
export type {
  BrokerSecret,
  Credentials,
  FreshJwt,
  Identity,
  InstanceInfo,
  Renewed,
} from "./answers.js";
export { BrokerError, type BrokerErrorCode, isBrokerError } from "./errors.js";
export type { RetryOptions } from "./http.js";
export { KEY_TYPES, type KeyType } from "./keys.js";
export {
  type BootstrapOptions,
  BrokerSession,
  bootstrap,
  type ConnectOptions,
  type PreparedKey,
  prepareKey,
} from "./session.js";
