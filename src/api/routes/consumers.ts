import type { FastifyPluginAsync } from "fastify";
import { type ConsumerInput, Consumers } from "../../pki/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf } from "../context.js";
import { nameParam, noBody, stringList } from "../schemas.js";

const serviceAudits = { serviceAudits: true } as const;
const fingerprint = { type: "string", pattern: "^[0-9a-f]{64}$" } as const;
const fingerprintBody = {
  type: "object",
  required: ["fingerprint"],
  additionalProperties: false,
  properties: { fingerprint },
} as const;

type Name = { Params: { name: string } };

/** TLS consumers (the router): their certificate, its rotation and rollback, and their agents. */
export function consumerRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { consumers } = deps.pki;
  return async (app) => {
    app.put<Name & { Body: ConsumerInput }>(
      "/v1/pki/consumers/:name",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            required: ["role", "dnsNames"],
            additionalProperties: false,
            properties: {
              role: { type: "string", minLength: 1, maxLength: 64 },
              commonName: { type: "string", minLength: 1, maxLength: 253 },
              dnsNames: stringList,
              ipAddresses: stringList,
              ttlSeconds: { type: "integer", minimum: 1 },
              keyType: { type: "string", maxLength: 16 },
            },
          },
        },
      },
      async (req) => {
        // The service records a change as cert.consumer.update, a creation as the issuance of its
        // first certificate (pki.issue); a refusal or failure goes under the consumer's own action.
        authorize(deps, req, "cert:write", `cert/${req.params.name}`, "cert.consumer.update");
        // Its certificates are issued under the role: defining it needs the right to issue there.
        authorize(deps, req, "pki:issue", `pki/role/${Consumers.roleOf(req.body)}`);
        req.custos.action = "cert.consumer.update";
        req.custos.resource = `cert/${req.params.name}`;
        return { consumer: await consumers.put(actorOf(req), req.params.name, req.body) };
      },
    );
    app.get("/v1/pki/consumers", async (req) => {
      authorize(deps, req, "cert:read", "cert/*");
      return { consumers: await consumers.list() };
    });
    app.get<Name>("/v1/pki/consumers/:name", { schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "cert:read", `cert/${req.params.name}`);
      return { consumer: await consumers.get(req.params.name) };
    });
    app.post<Name>(
      "/v1/pki/consumers/:name/rotate",
      { config: serviceAudits, schema: { params: nameParam, body: noBody } },
      async (req) => {
        // The service records a rotation as the issuance of its new generation: pki.issue.
        authorize(deps, req, "cert:rotate", `cert/${req.params.name}`, "pki.issue");
        return { consumer: await consumers.rotate(actorOf(req), req.params.name) };
      },
    );
    app.post<Name>(
      "/v1/pki/consumers/:name/rollback",
      { config: serviceAudits, schema: { params: nameParam, body: noBody } },
      async (req) => {
        authorize(deps, req, "cert:rotate", `cert/${req.params.name}`, "cert.rollback");
        return { consumer: await consumers.rollback(actorOf(req), req.params.name) };
      },
    );
    app.get<Name & { Querystring: { role?: string; known?: string } }>(
      "/v1/pki/consumers/:name/certificate",
      {
        schema: {
          params: nameParam,
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: { role: { type: "string", maxLength: 64 }, known: fingerprint },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "cert:agent", `cert/${req.params.name}`);
        const material = await consumers.material(req.params.name, req.query);
        Object.assign(req.custos.details, {
          generation: material.generation,
          fingerprint: material.fingerprint,
          keySent: !("unchanged" in material),
        });
        return material;
      },
    );
    app.post<Name & { Body: { fingerprint: string } }>(
      "/v1/pki/consumers/:name/renew",
      // Not serviceAudits: a renewal that finds nothing to do writes no record of its own.
      { schema: { params: nameParam, body: fingerprintBody } },
      async (req) => {
        authorize(deps, req, "cert:agent", `cert/${req.params.name}`);
        return { consumer: await consumers.renew(actorOf(req), req.params.name, req.body.fingerprint) };
      },
    );
    app.put<{ Params: { name: string; agent: string }; Body: { fingerprint: string } }>(
      "/v1/pki/consumers/:name/agents/:agent",
      {
        config: serviceAudits,
        schema: {
          params: {
            type: "object",
            required: ["name", "agent"],
            properties: { name: nameParam.properties.name, agent: { type: "string", minLength: 1, maxLength: 128 } },
          },
          body: fingerprintBody,
        },
      },
      async (req) => {
        authorize(deps, req, "cert:agent", `cert/${req.params.name}`, "cert.agent.report");
        const consumer = await consumers.report(actorOf(req), req.params.name, req.params.agent, req.body.fingerprint);
        return { consumer };
      },
    );
  };
}
