import type { FastifyPluginAsync } from "fastify";
import { type ApiDeps, authorize } from "../app.js";
import { noBody } from "../schemas.js";

const seq = { type: "string", pattern: "^[0-9]{1,15}$" } as const;
/** A positive integer; `AuditLog.list` refuses one above `AUDIT_LIST_MAX` with `invalid_request` (the one bound). */
const limit = { type: "string", pattern: "^[1-9][0-9]{0,14}$" } as const;

/** Reading and verifying the audit journal, and the audit HMAC of a value (privileged). */
export function auditRoutes(deps: ApiDeps): FastifyPluginAsync {
  return async (app) => {
    app.get<{
      Querystring: {
        after?: string;
        limit?: string;
        principal?: string;
        action?: string;
        resource?: string;
        order?: "asc" | "desc";
      };
    }>(
      "/v1/audit",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: {
              after: seq,
              limit,
              principal: { type: "string", maxLength: 256 },
              action: { type: "string", maxLength: 128 },
              // Above the longest resource a record can name (secret/ and a 256-character path, say).
              resource: { type: "string", maxLength: 1024 },
              order: { enum: ["asc", "desc"] },
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "audit:read", "audit");
        const q = req.query;
        const records = await deps.audit.list({
          ...(q.after !== undefined ? { afterSeq: Number(q.after) } : {}),
          limit: Number(q.limit ?? 100),
          ...(q.principal !== undefined ? { principal: q.principal } : {}),
          ...(q.action !== undefined ? { action: q.action } : {}),
          ...(q.resource !== undefined ? { resource: q.resource } : {}),
          descending: q.order === "desc",
        });
        return { records };
      },
    );

    // The HMAC a secret write records as `valueHmac`, for an auditor who knows a value.
    // The request is recorded like any other: method and route, never the body.
    app.post<{ Body: { value: string } }>(
      "/v1/audit/hash",
      {
        schema: {
          body: {
            type: "object",
            required: ["value"],
            additionalProperties: false,
            properties: { value: { type: "string" } },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "audit:hash", "audit");
        return { hmac: await deps.secrets.valueHmac(req.body.value) };
      },
    );

    app.post("/v1/audit/verify", { schema: { body: noBody } }, async (req) => {
      authorize(deps, req, "audit:verify", "audit");
      return deps.audit.verify();
    });
  };
}
