import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { CustosError } from "../../errors/index.js";
import { type AppRef, appResource, type OwnersInput } from "../../platform/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf, principalOf } from "../context.js";

const serviceAudits = { serviceAudits: true } as const;
const creating = { ...serviceAudits, created: true } as const;
/** Org, space and app names are DNS labels (docs/broker.md); the service checks them again. */
const label = { type: "string", pattern: "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$" } as const;
const nameBody = { type: "object", required: ["name"], additionalProperties: false, properties: { name: label } };
const nameList = { type: "array", maxItems: 64, items: { type: "string", minLength: 1, maxLength: 128 } } as const;
const owners = {
  type: "object",
  additionalProperties: false,
  properties: { users: nameList, groups: nameList },
} as const;

function params(...names: string[]) {
  return { type: "object", required: names, properties: Object.fromEntries(names.map((n) => [n, label])) };
}

type OrgP = { Params: { org: string } };
type SpaceP = { Params: { org: string; space: string } };
type AppP = { Params: { org: string; space: string; app: string } };

const refOf = (p: AppP["Params"]): AppRef => ({ org: p.org, space: p.space, app: p.app });

/** The platform model: orgs, spaces, apps and their owners (docs/broker.md). */
export function platformRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { platform } = deps;

  /** `platform:read` by policy, or by owning the app. */
  async function authorizeAppRead(req: FastifyRequest, ref: AppRef): Promise<void> {
    const resource = appResource(ref);
    req.custos.action = "platform:read";
    req.custos.resource = resource;
    if (deps.auth.isAllowed(principalOf(req), "platform:read", resource)) return;
    const app = await platform.getApp(ref).catch(() => undefined);
    if (app !== undefined && (await platform.isOwner(principalOf(req), app))) {
      req.custos.details.asOwner = true;
      return;
    }
    throw new CustosError("forbidden", `not allowed: platform:read on ${resource}`);
  }

  return async (app) => {
    // ---- orgs
    app.post<{ Body: { name: string } }>(
      "/v1/platform/orgs",
      { config: creating, schema: { body: nameBody } },
      async (req) => {
        authorize(deps, req, "platform:write", `org/${req.body.name}`, "platform.org.create");
        return { org: await platform.createOrg(actorOf(req), req.body.name) };
      },
    );
    app.get("/v1/platform/orgs", async (req) => {
      authorize(deps, req, "platform:read", "org/*");
      return { orgs: await platform.listOrgs() };
    });
    app.delete<OrgP>(
      "/v1/platform/orgs/:org",
      { config: serviceAudits, schema: { params: params("org") } },
      async (req) => {
        authorize(deps, req, "platform:write", `org/${req.params.org}`, "platform.org.delete");
        await platform.deleteOrg(actorOf(req), req.params.org);
        return { deleted: true };
      },
    );

    // ---- spaces
    app.post<OrgP & { Body: { name: string } }>(
      "/v1/platform/orgs/:org/spaces",
      { config: creating, schema: { params: params("org"), body: nameBody } },
      async (req) => {
        authorize(deps, req, "platform:write", `org/${req.params.org}/space/${req.body.name}`, "platform.space.create");
        return { space: await platform.createSpace(actorOf(req), req.params.org, req.body.name) };
      },
    );
    app.get<OrgP>("/v1/platform/orgs/:org/spaces", { schema: { params: params("org") } }, async (req) => {
      authorize(deps, req, "platform:read", `org/${req.params.org}`);
      return { spaces: await platform.listSpaces(req.params.org) };
    });
    app.delete<SpaceP>(
      "/v1/platform/orgs/:org/spaces/:space",
      { config: serviceAudits, schema: { params: params("org", "space") } },
      async (req) => {
        authorize(
          deps,
          req,
          "platform:write",
          `org/${req.params.org}/space/${req.params.space}`,
          "platform.space.delete",
        );
        await platform.deleteSpace(actorOf(req), req.params.org, req.params.space);
        return { deleted: true };
      },
    );

    // ---- apps
    app.post<SpaceP & { Body: { name: string; owners?: OwnersInput } }>(
      "/v1/platform/orgs/:org/spaces/:space/apps",
      {
        config: creating,
        schema: {
          params: params("org", "space"),
          body: {
            type: "object",
            required: ["name"],
            additionalProperties: false,
            properties: { name: label, owners },
          },
        },
      },
      async (req) => {
        const ref = { org: req.params.org, space: req.params.space, app: req.body.name };
        authorize(deps, req, "platform:write", appResource(ref), "platform.app.create");
        return { app: await platform.createApp(actorOf(req), ref, req.body.owners ?? {}) };
      },
    );
    app.get<SpaceP>(
      "/v1/platform/orgs/:org/spaces/:space/apps",
      { schema: { params: params("org", "space") } },
      async (req) => {
        authorize(deps, req, "platform:read", `org/${req.params.org}/space/${req.params.space}`);
        return { apps: await platform.listApps(req.params.org, req.params.space) };
      },
    );
    app.get<AppP>(
      "/v1/platform/apps/:org/:space/:app",
      { schema: { params: params("org", "space", "app") } },
      async (req) => {
        await authorizeAppRead(req, refOf(req.params));
        return { app: await platform.describeApp(refOf(req.params)) };
      },
    );
    app.patch<AppP & { Body: { owners: OwnersInput } }>(
      "/v1/platform/apps/:org/:space/:app",
      {
        config: serviceAudits,
        schema: {
          params: params("org", "space", "app"),
          body: { type: "object", required: ["owners"], additionalProperties: false, properties: { owners } },
        },
      },
      async (req) => {
        authorize(deps, req, "platform:write", appResource(refOf(req.params)), "platform.app.update");
        return { app: await platform.setOwners(actorOf(req), refOf(req.params), req.body.owners) };
      },
    );
    app.delete<AppP>(
      "/v1/platform/apps/:org/:space/:app",
      { config: serviceAudits, schema: { params: params("org", "space", "app") } },
      async (req) => {
        // Audited as the service records the finished deletion (platform.app.delete), not its first step (….begin).
        authorize(deps, req, "platform:write", appResource(refOf(req.params)), "platform.app.delete");
        await platform.deleteApp(actorOf(req), refOf(req.params));
        return { deleted: true };
      },
    );
  };
}
