import type { FastifyPluginAsync } from "fastify";
import { foldedName } from "../../auth/index.js";
import type { TokenRecord } from "../../store/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf, principalOf } from "../context.js";
import { idParam, stringList } from "../schemas.js";

function tokenView(t: TokenRecord) {
  return {
    id: t.id,
    name: t.name,
    kind: t.kind,
    userId: t.userId,
    policies: t.policies,
    createdAt: t.createdAt,
    expiresAt: t.expiresAt,
    revokedAt: t.revokedAt,
    parentId: t.parentId,
    makerUserId: t.makerUserId,
    renewTtlSeconds: t.renewal?.ttlSeconds ?? null,
    maxExpiresAt: t.renewal?.maxExpiresAt ?? null,
  };
}

/** Login, whoami and API tokens. */
export function authRoutes(deps: ApiDeps): FastifyPluginAsync {
  return async (app) => {
    app.post<{ Body: { username: string; password: string } }>(
      "/v1/auth/login",
      {
        config: {
          public: true,
          serviceAudits: true,
          auditAction: "auth.login",
          rateLimit: { max: deps.loginAttemptsPerMinute ?? 10, timeWindow: 60_000 },
        },
        schema: {
          body: {
            type: "object",
            required: ["username", "password"],
            additionalProperties: false,
            properties: {
              username: { type: "string", minLength: 1, maxLength: 64 },
              password: { type: "string", minLength: 1, maxLength: 1024 },
            },
          },
        },
      },
      async (req) => {
        req.custos.resource = `user/${foldedName(req.body.username)}`;
        const session = await deps.auth.login(actorOf(req), req.body.username, req.body.password);
        try {
          return { token: session.token.exposeText(), tokenId: session.tokenId, expiresAt: session.expiresAt };
        } finally {
          session.token.destroy();
        }
      },
    );

    app.get("/v1/auth/whoami", async (req) => {
      req.custos.action = "auth.whoami";
      const p = principalOf(req);
      return { kind: p.kind, id: p.id, name: p.name, policies: p.policies, isAdmin: p.isAdmin, sudoUntil: p.sudoUntil };
    });

    app.post<{
      Body: { name: string; policies?: string[]; ttlSeconds?: number; maxTtlSeconds?: number; forUser?: boolean };
    }>(
      "/v1/auth/tokens",
      {
        config: { serviceAudits: true, created: true },
        schema: {
          body: {
            type: "object",
            required: ["name"],
            additionalProperties: false,
            properties: {
              name: { type: "string", minLength: 1, maxLength: 128 },
              policies: stringList,
              // Its range is the service's (60 s to 10 years), checked there with a message naming it.
              ttlSeconds: { type: "integer" },
              maxTtlSeconds: { type: "integer" },
              // false: a standalone token (a platform agent's), which outlives its creator's account.
              forUser: { type: "boolean" },
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "token:create", "token/*");
        const { token, record } = await deps.auth.createToken(actorOf(req), principalOf(req), req.body);
        try {
          return { token: token.exposeText(), ...tokenView(record) };
        } finally {
          token.destroy();
        }
      },
    );

    app.get("/v1/auth/tokens", async (req) => {
      authorize(deps, req, "token:read", "token/*");
      const tokens = await deps.auth.listTokens(principalOf(req));
      return { tokens: tokens.map(tokenView) };
    });

    app.post<{ Params: { id: string }; Body: { ttlSeconds?: number } | null }>(
      "/v1/auth/tokens/:id/renew",
      {
        config: { serviceAudits: true },
        schema: {
          params: idParam,
          body: {
            type: ["object", "null"],
            additionalProperties: false,
            // Its range is the service's (60 s to 10 years).
            properties: { ttlSeconds: { type: "integer" } },
          },
        },
      },
      async (req) => {
        // The service authorises, as for revoking: renewing one's own token needs no policy.
        const id = req.params.id === "self" ? principalOf(req).tokenId : req.params.id;
        req.custos.action = "token:renew";
        req.custos.resource = `token/${id}`;
        const input = req.body?.ttlSeconds === undefined ? {} : { ttlSeconds: req.body.ttlSeconds };
        return tokenView(await deps.auth.renewToken(actorOf(req), principalOf(req), id, input));
      },
    );

    app.delete<{ Params: { id: string } }>(
      "/v1/auth/tokens/:id",
      { config: { serviceAudits: true }, schema: { params: idParam } },
      async (req) => {
        // The service authorises: revoking one's own token needs no policy, which it alone can tell.
        req.custos.action = "token:revoke";
        req.custos.resource = `token/${req.params.id}`;
        const revokedWith = await deps.auth.revokeToken(actorOf(req), principalOf(req), req.params.id);
        return { revoked: true, revokedWith };
      },
    );
  };
}
