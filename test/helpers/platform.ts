/**
 * The platform set-up that suites needing an app and its instances share: users who
 * log in, org acme with space prod and its apps, and a platform agent's token.
 */
import assert from "node:assert/strict";
import { type CustosInstance, ok } from "./custos.js";

/** Creates user `name` (no policies) and logs in: the user's session token. */
export async function loggedInUser(custos: CustosInstance, name: string, password: string): Promise<string> {
  ok(await custos.call("POST", "/v1/users", { name, password, policies: [] }), 201);
  return String(ok(await custos.call("POST", "/v1/auth/login", { username: name, password }, null)).token);
}

/** Org acme, its space prod, and `apps` in it, each with its owners. */
export async function acmeProdApps(
  custos: CustosInstance,
  apps: ReadonlyArray<{ name: string; owners: { users?: string[]; groups?: string[] } }>,
): Promise<void> {
  const steps: Array<[string, object]> = [
    ["/v1/platform/orgs", { name: "acme" }],
    ["/v1/platform/orgs/acme/spaces", { name: "prod" }],
    ...apps.map((app): [string, object] => ["/v1/platform/orgs/acme/spaces/prod/apps", app]),
  ];
  for (const [path, body] of steps) {
    const a = await custos.call("POST", path, body);
    assert.ok(a.status === 200 || a.status === 201, a.text);
  }
}

/** A token for platform agent node-agent-1, made with the CLI as an operator would. */
export function nodeAgentToken(custos: CustosInstance): string {
  const made = custos.cli(["broker", "agent-token", "node-agent-1"]);
  assert.equal(made.status, 0, made.stderr);
  return made.stdout.trim();
}
