import type { FastifyPluginAsync } from "fastify";
import { wasAudited } from "../../audit/index.js";
import {
  CRITICAL_OPTIONS,
  EXTENSIONS,
  type GrantSudoInput,
  MAX_SUDO_TTL_SECONDS,
  MIN_SUDO_TTL_SECONDS,
  parsePublicKeyLine,
  type SignInput,
} from "../../ssh-ca/index.js";
import { AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT } from "../../store/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf, principalOf } from "../context.js";

const publicRoute = { config: { public: true } } as const;
const serviceAudits = { serviceAudits: true } as const;
/** An OpenSSH public key line: RSA-16384 is about 2.8 KB of base64. */
const publicKey = { type: "string", minLength: 1, maxLength: 16_384 } as const;
const label = { type: "string", pattern: "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$" } as const;
const serial = { type: "string", pattern: "^[1-9][0-9]{0,19}$" } as const;
const roleName = {
  type: "object",
  required: ["name"],
  properties: { name: { type: "string", pattern: "^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$" } },
} as const;

const signBody = {
  type: "object",
  required: ["role", "publicKey"],
  additionalProperties: false,
  properties: {
    role: { type: "string", minLength: 1, maxLength: 64 },
    publicKey,
    principals: { type: "array", maxItems: 256, items: { type: "string", minLength: 1, maxLength: 255 } },
    // No maximum here: the role's maxTtlSeconds decides, so a long TTL is ttl_too_long, audited as an ssh.sign denial.
    ttlSeconds: { type: "integer", minimum: 1 },
    extensions: { type: "array", maxItems: EXTENSIONS.length, items: { type: "string", maxLength: 64 } },
    criticalOptions: {
      type: "object",
      maxProperties: CRITICAL_OPTIONS.length,
      additionalProperties: { type: "string", maxLength: 4096 },
    },
  },
} as const;

const revokeBody = {
  type: "object",
  additionalProperties: false,
  properties: { serial, publicKey, reason: { type: "string", minLength: 1, maxLength: 1024 } },
} as const;

const sudoBody = {
  type: "object",
  required: ["org", "space", "app", "ttlSeconds", "reason"],
  additionalProperties: false,
  properties: {
    org: label,
    space: label,
    app: label,
    user: { type: "string", minLength: 1, maxLength: 128 },
    group: { type: "string", minLength: 1, maxLength: 128 },
    ttlSeconds: { type: "integer", minimum: MIN_SUDO_TTL_SECONDS, maximum: MAX_SUDO_TTL_SECONDS },
    reason: { type: "string", minLength: 1, maxLength: 1024 },
    account: { type: "string", minLength: 1, maxLength: 32 },
  },
} as const;

type Name = { Params: { name: string } };

/** The SSH CA (docs/ssh-ca.md): public CA keys and KRL; signing; inventory and revocation; roles; sudo grants. */
export function sshRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { ssh } = deps;
  return async (app) => {
    // ---- public -------------------------------------------------------------------

    app.get("/v1/ssh/ca", publicRoute, async (req) => {
      req.custos.action = "ssh.ca.read";
      return ssh.caKeys();
    });
    app.get("/v1/ssh/trusted-user-ca-keys", publicRoute, async (req, reply) => {
      req.custos.action = "ssh.ca.read";
      return reply
        .type("text/plain; charset=utf-8")
        .header("cache-control", "no-cache")
        .send(ssh.caKeys().trustedUserCaKeys);
    });
    app.get("/v1/ssh/known-hosts", publicRoute, async (req, reply) => {
      req.custos.action = "ssh.ca.read";
      return reply.type("text/plain; charset=utf-8").header("cache-control", "no-cache").send(ssh.caKeys().knownHosts);
    });
    app.get("/v1/ssh/krl", publicRoute, async (req, reply) => {
      req.custos.action = "ssh.krl.read";
      const krl = await ssh.krl();
      return reply
        .type("application/octet-stream")
        .header("cache-control", "no-cache")
        .header("x-krl-version", String(krl.version))
        .send(krl.krl);
    });

    // ---- signing ----------------------------------------------------------------------

    app.post<{ Body: SignInput }>(
      "/v1/ssh/sign",
      { config: serviceAudits, schema: { body: signBody } },
      async (req) => {
        const principal = principalOf(req);
        // Set before the lookup, so that an unknown role is audited as a refused ssh.sign on it.
        req.custos.action = "ssh:sign";
        req.custos.resource = `ssh/role/${req.body.role}`;
        const role = ssh.role(req.body.role);
        // A self-service role's principals come only from what the requester owns: nothing to grant.
        if (!role.selfService) authorize(deps, req, "ssh:sign", `ssh/role/${role.name}`);
        try {
          const requester = { display: principal.display, userId: principal.userId, ownerRights: !principal.scoped };
          return await ssh.sign(actorOf(req), requester, req.body);
        } catch (e) {
          if (wasAudited(e)) req.custos.audited = true;
          throw e;
        }
      },
    );

    // ---- inventory and revocation ---------------------------------------------------

    app.get<{ Querystring: { status?: "valid" | "revoked"; limit?: string } }>(
      "/v1/ssh/certificates",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: {
              status: { type: "string", enum: ["valid", "revoked"] },
              limit: { type: "string", pattern: "^[1-9][0-9]{0,4}$" },
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "ssh:read", "ssh/cert");
        const { status, limit } = req.query;
        const count = Math.min(limit === undefined ? AUDIT_DEFAULT_LIMIT : Number(limit), AUDIT_MAX_LIMIT);
        return { certificates: await ssh.certificates({ ...(status ? { status } : {}), limit: count }) };
      },
    );
    app.get<{ Params: { serial: string } }>(
      "/v1/ssh/certificates/:serial",
      { schema: { params: { type: "object", required: ["serial"], properties: { serial } } } },
      async (req) => {
        authorize(deps, req, "ssh:read", `ssh/cert/${req.params.serial}`);
        return ssh.certificate(req.params.serial);
      },
    );
    app.post<{ Body: { serial?: string; publicKey?: string; reason?: string } }>(
      "/v1/ssh/revoke",
      { config: serviceAudits, schema: { body: revokeBody } },
      async (req) => {
        const { serial, publicKey } = req.body;
        const resource =
          serial !== undefined
            ? `ssh/cert/${serial}`
            : `ssh/key/${publicKey === undefined ? "" : parsePublicKeyLine(publicKey).fingerprint}`;
        authorize(deps, req, "ssh:revoke", resource);
        return ssh.revoke(actorOf(req), req.body);
      },
    );

    // ---- roles ------------------------------------------------------------------------

    app.get("/v1/ssh/roles", async (req) => {
      authorize(deps, req, "ssh:read", "ssh/role/*");
      return { roles: ssh.roles() };
    });
    app.get<Name>("/v1/ssh/roles/:name", { schema: { params: roleName } }, async (req) => {
      authorize(deps, req, "ssh:read", `ssh/role/${req.params.name}`);
      return ssh.role(req.params.name);
    });
    app.put<Name & { Body: Record<string, unknown> }>(
      "/v1/ssh/roles/:name",
      { config: serviceAudits, schema: { params: roleName, body: { type: "object" } } },
      async (req) => {
        authorize(deps, req, "ssh:role-write", `ssh/role/${req.params.name}`, "ssh.role.put");
        return ssh.putRole(actorOf(req), req.params.name, req.body);
      },
    );
    app.delete<Name>("/v1/ssh/roles/:name", { config: serviceAudits, schema: { params: roleName } }, async (req) => {
      authorize(deps, req, "ssh:role-write", `ssh/role/${req.params.name}`, "ssh.role.delete");
      await ssh.deleteRole(actorOf(req), req.params.name);
      return { deleted: true };
    });

    // ---- sudo -------------------------------------------------------------------------

    app.post<{ Body: GrantSudoInput }>(
      "/v1/ssh/sudo",
      { config: { ...serviceAudits, created: true }, schema: { body: sudoBody } },
      async (req) => {
        const { org, space, app: name } = req.body;
        authorize(deps, req, "ssh:sudo-grant", `ssh/sudo/${org}/${space}/${name}`, "ssh.sudo.grant");
        return ssh.grantSudo(actorOf(req), req.body);
      },
    );
    app.get<{ Querystring: { active?: "true" | "false" } }>(
      "/v1/ssh/sudo",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: { active: { type: "string", enum: ["true", "false"] } },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "ssh:sudo-read", "ssh/sudo");
        return { grants: await ssh.sudoGrants(req.query.active === "true") };
      },
    );
    app.delete<{ Params: { id: string } }>(
      "/v1/ssh/sudo/:id",
      {
        config: serviceAudits,
        schema: { params: { type: "object", required: ["id"], properties: { id: { type: "string", maxLength: 64 } } } },
      },
      async (req) => {
        authorize(deps, req, "ssh:sudo-revoke", `ssh/sudo/${req.params.id}`, "ssh.sudo.revoke");
        // A failure is audited where the revocation would be: under the grant's app, once it is known to exist.
        req.custos.resource = (await ssh.sudoGrantResource(req.params.id)) ?? req.custos.resource;
        return ssh.revokeSudo(actorOf(req), req.params.id);
      },
    );
  };
}
