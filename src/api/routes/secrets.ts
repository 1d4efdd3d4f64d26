import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import type { Action } from "../../auth/index.js";
import { CustosError } from "../../errors/index.js";
import { type AppRef, appPath } from "../../platform/index.js";
import { type MetadataInput, parseGrantTarget, parseListPrefix, parseSecretPath } from "../../secrets/index.js";
import type { ApiDeps } from "../app.js";
import { actorOf, principalOf } from "../context.js";

const serviceAudits = { serviceAudits: true } as const;
type Wild = { Params: { "*": string } };

/** What an app's owners may do with its secrets without a policy saying so (docs/broker.md). */
const OWNER_ACTIONS: ReadonlySet<Action> = new Set([
  "secret:list",
  "secret:read",
  "secret:write",
  "secret:delete",
  "secret:destroy",
]);

const versionList = {
  type: "array",
  minItems: 1,
  maxItems: 100,
  items: { type: "integer", minimum: 1 },
} as const;
const cas = { type: "integer", minimum: 0 } as const;

/**
 * The wildcard part of the URL: the secret path (or prefix), percent-decoded once, by
 * the router. Decoding it again would let `%2541` name `A`.
 */
function wildcard(req: FastifyRequest<Wild>): string {
  return req.params["*"];
}

/** Secrets of apps and shared ones, their versions and metadata, and grants (docs/broker.md). */
export function secretRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { secrets, platform } = deps;

  /**
   * Authorises `action` on `secret/<path>`: by policy, or — for an app's own secrets —
   * by owning the app. `auditAction` names the request in the audit record
   * (denials included), so a metadata read is not mistaken for a value read.
   */
  async function authorizeSecret(
    req: FastifyRequest,
    action: Action,
    target: { path: string; app?: AppRef },
    auditAction: string,
  ): Promise<void> {
    const resource = `secret/${target.path}`;
    req.custos.action = auditAction;
    req.custos.resource = resource;
    req.custos.details.path = target.path;
    const principal = principalOf(req);
    if (deps.auth.isAllowed(principal, action, resource)) return;
    if (target.app !== undefined && OWNER_ACTIONS.has(action)) {
      const app = await platform.getApp(target.app).catch(() => undefined);
      if (app !== undefined && (await platform.isOwner(principal, app))) {
        req.custos.details.asOwner = appPath(app);
        return;
      }
    }
    throw new CustosError("forbidden", `not allowed: ${action} on ${resource}`);
  }

  function secretTarget(req: FastifyRequest<Wild>) {
    const t = parseSecretPath(wildcard(req));
    return t.kind === "app" ? { path: t.path, app: t.app } : { path: t.path };
  }

  return async (app) => {
    // ---- values
    app.put<Wild & { Body: { value: string; cas?: number } }>(
      "/v1/secrets/data/*",
      {
        config: serviceAudits,
        schema: {
          body: {
            type: "object",
            required: ["value"],
            additionalProperties: false,
            properties: { value: { type: "string" }, cas },
          },
        },
      },
      async (req) => {
        const target = secretTarget(req);
        await authorizeSecret(req, "secret:write", target, "secret.write");
        return { secret: await secrets.put(actorOf(req), target.path, req.body.value, req.body.cas) };
      },
    );
    app.post<Wild & { Body: { length?: number; alphabet?: string; cas?: number } }>(
      "/v1/secrets/generate/*",
      {
        config: serviceAudits,
        schema: {
          body: {
            type: "object",
            additionalProperties: false,
            properties: {
              length: { type: "integer" },
              alphabet: { type: "string", minLength: 1, maxLength: 1024 },
              cas,
            },
          },
        },
      },
      async (req) => {
        const target = secretTarget(req);
        await authorizeSecret(req, "secret:write", target, "secret.write");
        return { secret: await secrets.generate(actorOf(req), target.path, req.body ?? {}) };
      },
    );
    app.get<Wild & { Querystring: { version?: string } }>(
      "/v1/secrets/data/*",
      {
        config: serviceAudits,
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: { version: { type: "string", pattern: "^[1-9][0-9]{0,9}$" } },
          },
        },
      },
      async (req) => {
        const target = secretTarget(req);
        await authorizeSecret(req, "secret:read", target, "secret.read");
        const version = req.query.version === undefined ? undefined : Number(req.query.version);
        if (version !== undefined) req.custos.details.version = version;
        return await secrets.read(actorOf(req), target.path, version);
      },
    );

    // ---- metadata
    app.get<Wild>("/v1/secrets/metadata/*", async (req) => {
      const target = secretTarget(req);
      await authorizeSecret(req, "secret:read", target, "secret.metadata.read");
      return { metadata: await secrets.metadata(target.path) };
    });
    app.patch<Wild & { Body: MetadataInput }>(
      "/v1/secrets/metadata/*",
      {
        config: serviceAudits,
        schema: {
          body: {
            type: "object",
            additionalProperties: false,
            minProperties: 1,
            properties: {
              maxVersions: { type: "integer" },
              casRequired: { type: "boolean" },
              customMetadata: { type: "object", additionalProperties: { type: "string" } },
            },
          },
        },
      },
      async (req) => {
        const target = secretTarget(req);
        await authorizeSecret(req, "secret:write", target, "secret.metadata.update");
        return { metadata: await secrets.updateMetadata(actorOf(req), target.path, req.body ?? {}) };
      },
    );
    app.delete<Wild>("/v1/secrets/metadata/*", { config: serviceAudits }, async (req) => {
      const target = secretTarget(req);
      await authorizeSecret(req, "secret:destroy", target, "secret.metadata.delete");
      await secrets.deleteAll(actorOf(req), target.path);
      return { deleted: true };
    });
    app.get<Wild & { Querystring: { after?: string } }>(
      "/v1/secrets/list/*",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            // The service says what a cursor must look like.
            properties: { after: { type: "string", maxLength: 256 } },
          },
        },
      },
      async (req) => {
        const t = parseListPrefix(wildcard(req));
        await authorizeSecret(
          req,
          "secret:list",
          t.kind === "app" ? { path: t.prefix, app: t.app } : { path: t.prefix },
          "secret.list",
        );
        return await secrets.list(t.prefix, req.query.after);
      },
    );

    // ---- versions: delete (latest when none are named), undelete, destroy
    const versionRoutes = [
      ["delete", "secret:delete", false, secrets.deleteVersions],
      ["undelete", "secret:delete", true, secrets.undeleteVersions],
      ["destroy", "secret:destroy", true, secrets.destroyVersions],
    ] as const;
    for (const [verb, action, required, change] of versionRoutes) {
      app.post<Wild & { Body: { versions?: number[] } }>(
        `/v1/secrets/${verb}/*`,
        {
          config: serviceAudits,
          schema: {
            body: {
              type: "object",
              additionalProperties: false,
              ...(required ? { required: ["versions"] } : {}),
              properties: { versions: versionList },
            },
          },
        },
        async (req) => {
          const target = secretTarget(req);
          await authorizeSecret(req, action, target, `secret.${verb}`);
          return { metadata: await change.call(secrets, actorOf(req), target.path, req.body?.versions) };
        },
      );
    }

    // ---- grants of shared secrets
    app.put<Wild & { Body: { apps: string[] } }>(
      "/v1/secrets/grants/*",
      {
        config: serviceAudits,
        schema: {
          body: {
            type: "object",
            required: ["apps"],
            additionalProperties: false,
            properties: {
              apps: { type: "array", minItems: 1, maxItems: 100, items: { type: "string", maxLength: 200 } },
            },
          },
        },
      },
      async (req) => {
        const target = parseGrantTarget(wildcard(req));
        await authorizeSecret(req, "secret:grant", { path: target }, "secret.grant");
        return { grants: await secrets.grant(actorOf(req), target, req.body.apps) };
      },
    );
    app.get("/v1/secrets/grants", async (req) => {
      req.custos.action = "secret.grants.read";
      req.custos.resource = "secret/shared/";
      if (!deps.auth.isAllowed(principalOf(req), "secret:list", "secret/shared/")) {
        throw new CustosError("forbidden", "not allowed: secret:list on secret/shared/");
      }
      return { grants: await secrets.listGrants() };
    });
  };
}
