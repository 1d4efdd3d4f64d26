/** Instance registration and exchange over the API, as the broker tests drive them. */
import assert from "node:assert/strict";
import type { CustosInstance, HttpAnswer } from "../helpers/custos.js";

type Json = Record<string, unknown>;

/** Registers `instance` of acme/prod/web as the platform agent `agent`; the 201 answer. */
export async function registerInstance(
  custos: CustosInstance,
  agent: string,
  instance: string,
  ttlSeconds?: number,
): Promise<Json> {
  const body = { org: "acme", space: "prod", app: "web", instance, ...(ttlSeconds ? { ttlSeconds } : {}) };
  const a = await custos.call("POST", "/v1/broker/instances", body, agent);
  assert.equal(a.status, 201, a.text);
  return a.body as Json;
}

/** Exchanges a bootstrap token and a CSR for the instance's credentials (no bearer token). */
export function exchangeToken(
  custos: CustosInstance,
  token: unknown,
  instance: string,
  csr: string,
): Promise<HttpAnswer> {
  return custos.call("POST", "/v1/broker/exchange", { token, instance, csr }, null);
}
