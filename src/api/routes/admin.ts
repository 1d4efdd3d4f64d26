import type { FastifyPluginAsync } from "fastify";
import { foldedName } from "../../auth/index.js";
import { CustosError } from "../../errors/index.js";
import type { GroupRecord, PolicyRecord, SudoGrantRecord, UserRecord } from "../../store/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf } from "../context.js";
import { idParam, nameParam, stringList } from "../schemas.js";

const userView = (u: UserRecord) => ({
  name: u.name,
  policies: u.policies,
  disabled: u.disabled,
  hasPassword: u.passwordHash !== null,
  createdAt: u.createdAt,
  updatedAt: u.updatedAt,
});

const policyView = (p: PolicyRecord) => ({
  name: p.name,
  description: p.description,
  rules: p.rules,
  createdAt: p.createdAt,
  updatedAt: p.updatedAt,
});

const password = { type: "string", minLength: 1, maxLength: 1024 } as const;
const mutating = { config: { serviceAudits: true } } as const;
const creating = { config: { serviceAudits: true, created: true } } as const;

type Name = { Params: { name: string } };

/** Users, groups, policies and sudo grants: the administration surface. */
export function adminRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { auth } = deps;
  return async (app) => {
    // ---- users
    app.get("/v1/users", async (req) => {
      authorize(deps, req, "user:read", "user/*");
      return { users: (await auth.listUsers()).map(userView) };
    });
    app.post<{ Body: { name: string; password?: string; policies?: string[] } }>(
      "/v1/users",
      {
        ...creating,
        schema: {
          body: {
            type: "object",
            required: ["name"],
            additionalProperties: false,
            properties: { name: { type: "string", minLength: 1, maxLength: 64 }, password, policies: stringList },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "user:write", `user/${foldedName(req.body.name)}`, "user.create");
        return userView(await auth.createUser(actorOf(req), req.body));
      },
    );
    app.get<Name>("/v1/users/:name", { schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "user:read", `user/${foldedName(req.params.name)}`);
      return userView(await auth.getUser(req.params.name));
    });
    app.patch<Name & { Body: { password?: string; policies?: string[]; disabled?: boolean } }>(
      "/v1/users/:name",
      {
        ...mutating,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            additionalProperties: false,
            minProperties: 1,
            properties: { password, policies: stringList, disabled: { type: "boolean" } },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "user:write", `user/${foldedName(req.params.name)}`, "user.update");
        return userView(await auth.updateUser(actorOf(req), req.params.name, req.body));
      },
    );
    app.delete<Name>("/v1/users/:name", { ...mutating, schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "user:write", `user/${foldedName(req.params.name)}`, "user.delete");
      await auth.deleteUser(actorOf(req), req.params.name);
      return { deleted: true };
    });

    // ---- groups
    const groupView = async (g: GroupRecord) => ({
      name: g.name,
      members: await auth.userNames(g.members),
      policies: g.policies,
      createdAt: g.createdAt,
      updatedAt: g.updatedAt,
    });
    app.get("/v1/groups", async (req) => {
      authorize(deps, req, "group:read", "group/*");
      return { groups: await Promise.all((await auth.listGroups()).map(groupView)) };
    });
    app.post<{ Body: { name: string; members?: string[]; policies?: string[] } }>(
      "/v1/groups",
      {
        ...creating,
        schema: {
          body: {
            type: "object",
            required: ["name"],
            additionalProperties: false,
            properties: {
              name: { type: "string", minLength: 1, maxLength: 64 },
              members: stringList,
              policies: stringList,
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "group:write", `group/${foldedName(req.body.name)}`, "group.create");
        return groupView(await auth.createGroup(actorOf(req), req.body));
      },
    );
    app.get<Name>("/v1/groups/:name", { schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "group:read", `group/${foldedName(req.params.name)}`);
      return groupView(await auth.getGroup(req.params.name));
    });
    app.patch<
      Name & { Body: { members?: string[]; addMembers?: string[]; removeMembers?: string[]; policies?: string[] } }
    >(
      "/v1/groups/:name",
      {
        ...mutating,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            additionalProperties: false,
            minProperties: 1,
            properties: {
              members: stringList,
              addMembers: stringList,
              removeMembers: stringList,
              policies: stringList,
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "group:write", `group/${foldedName(req.params.name)}`, "group.update");
        return groupView(await auth.updateGroup(actorOf(req), req.params.name, req.body));
      },
    );
    app.delete<Name>("/v1/groups/:name", { ...mutating, schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "group:write", `group/${foldedName(req.params.name)}`, "group.delete");
      await auth.deleteGroup(actorOf(req), req.params.name);
      return { deleted: true };
    });

    // ---- policies
    app.get("/v1/policies", async (req) => {
      authorize(deps, req, "policy:read", "policy/*");
      return { policies: (await auth.listPolicies()).map(policyView) };
    });
    app.get<Name>("/v1/policies/:name", { schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "policy:read", `policy/${foldedName(req.params.name)}`);
      return policyView(await auth.getPolicy(req.params.name));
    });
    app.put<Name & { Body: { description?: string; rules: { resource: string; actions: string[] }[] } }>(
      "/v1/policies/:name",
      {
        ...mutating,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            required: ["rules"],
            additionalProperties: false,
            properties: {
              description: { type: "string", maxLength: 1024 },
              rules: {
                type: "array",
                maxItems: 256,
                items: {
                  type: "object",
                  required: ["resource", "actions"],
                  additionalProperties: false,
                  properties: {
                    resource: { type: "string", minLength: 1, maxLength: 256 },
                    actions: { type: "array", minItems: 1, maxItems: 64, items: { type: "string", minLength: 1 } },
                  },
                },
              },
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "policy:write", `policy/${foldedName(req.params.name)}`, "policy.put");
        return policyView(await auth.putPolicy(actorOf(req), { name: req.params.name, ...req.body }));
      },
    );
    app.delete<Name>("/v1/policies/:name", { ...mutating, schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "policy:write", `policy/${foldedName(req.params.name)}`, "policy.delete");
      await auth.deletePolicy(actorOf(req), req.params.name);
      return { deleted: true };
    });

    // ---- sudo
    const grantView = async (g: SudoGrantRecord) => ({
      id: g.id,
      subjectType: g.subjectType,
      subject: await auth.subjectName(g),
      policies: g.policies,
      reason: g.reason,
      grantedBy: g.grantedBy,
      createdAt: g.createdAt,
      expiresAt: g.expiresAt,
      revokedAt: g.revokedAt,
    });
    app.get<{ Querystring: { active?: "true" | "false" } }>(
      "/v1/sudo/grants",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: { active: { enum: ["true", "false"] } },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "sudo:read", "sudo");
        const grants = await auth.listSudoGrants(req.query.active === "true");
        return { grants: await Promise.all(grants.map(grantView)) };
      },
    );
    app.post<{ Body: { user?: string; group?: string; ttlSeconds: number; reason: string; policies?: string[] } }>(
      "/v1/sudo/grants",
      {
        ...creating,
        schema: {
          body: {
            type: "object",
            required: ["ttlSeconds", "reason"],
            additionalProperties: false,
            properties: {
              user: { type: "string", minLength: 1, maxLength: 64 },
              group: { type: "string", minLength: 1, maxLength: 64 },
              ttlSeconds: { type: "integer", minimum: 1 },
              reason: { type: "string", minLength: 1, maxLength: 1024 },
              policies: stringList,
            },
          },
        },
      },
      async (req) => {
        const { user, group } = req.body;
        if ((user === undefined) === (group === undefined)) {
          throw new CustosError("invalid_request", "name exactly one of user or group");
        }
        // Authorised on `sudo`, audited where the grant's success is: under its subject.
        const subject = user !== undefined ? `user/${foldedName(user)}` : `group/${foldedName(group ?? "")}`;
        authorize(deps, req, "sudo:grant", "sudo", { action: "sudo.grant", resource: subject });
        return grantView(await auth.grantSudo(actorOf(req), req.body));
      },
    );
    app.delete<{ Params: { id: string } }>(
      "/v1/sudo/grants/:id",
      { ...mutating, schema: { params: idParam } },
      async (req) => {
        authorize(deps, req, "sudo:revoke", "sudo", { action: "sudo.revoke", resource: `sudo/${req.params.id}` });
        await auth.revokeSudo(actorOf(req), req.params.id);
        return { revoked: true };
      },
    );
  };
}
