/**
 * The Custos API client, for the `custos` command and for libraries that call the
 * API (envelope encryption): `CustosClient`, `clientFromEnv`, and `ClientError`
 * with its stable codes.
 */

export { caFromEnv, clientFromEnv, type EnvClientOptions, tokenFromEnv } from "./env.js";
export {
  apiError,
  ClientError,
  type ClientErrorCode,
  type ClientErrorOptions,
  configError,
  isClientError,
  transportError,
} from "./errors.js";
export {
  type Answer,
  type ClientOptions,
  CustosClient,
  DEFAULT_ADDR,
  type QueryValue,
  type RequestOptions,
} from "./http.js";
export { DEFAULT_RETRY, RETRYABLE_CODES, type RetryOptions } from "./retry.js";
