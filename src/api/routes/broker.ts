import type { TLSSocket } from "node:tls";
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { wasAudited } from "../../audit/index.js";
import {
  type AuthenticatedInstance,
  checkListQuery,
  type InstanceCredential,
  instanceResource,
  instanceScopeResource,
  MAX_LEASE_SECONDS,
  type RegisterInput,
  type RequestInfo,
} from "../../broker/index.js";
import { CustosError } from "../../errors/index.js";
import { MAX_CSR_BYTES } from "../../pki/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf } from "../context.js";
import { noBody } from "../schemas.js";

/** A DNS label (docs/broker.md, Names). */
const label = { type: "string", pattern: "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$" } as const;
const ttlSeconds = { type: "integer", minimum: 10, maximum: MAX_LEASE_SECONDS } as const;
const csr = { type: "string", minLength: 1, maxLength: MAX_CSR_BYTES } as const;
const idParam = { type: "object", required: ["id"], properties: { id: label } } as const;
/** A JWT of ours is well under 2 KiB; a bootstrap token is 64 characters. */
const MAX_JWT = 8192;

/** Instance routes authenticate the instance themselves and the broker writes every record, refusals included. */
/** The bootstrap exchange: the one-time token is in the body. */
const exchangeRoute = { public: true, serviceAudits: true } as const;
/** An instance's own endpoints: its certificate or JWT (see `credentialOf`). */
const instanceRoute = { ...exchangeRoute, instanceCredential: true } as const;

type Id = { Params: { id: string } };

/**
 * The credential an instance presented: the client certificate of this TLS
 * connection (the listener asks, never requires, and checks the chain against the
 * PKI's CAs: `authorized`), or an instance JWT as bearer token. A certificate the
 * chain check passed wins; one it failed (expired, say) gives way to a JWT sent
 * beside it, and is judged (and refused) only when there is none.
 */
function credentialOf(req: FastifyRequest): InstanceCredential | null {
  const socket = req.raw.socket as Partial<TLSSocket>;
  const peer = typeof socket.getPeerCertificate === "function" ? socket.getPeerCertificate() : undefined;
  const header = req.headers.authorization;
  // RFC 6750 2.1: "Bearer" 1*SP b64token, as the rest of the API reads it.
  const match = header ? /^Bearer +([A-Za-z0-9_.-]+)$/i.exec(header) : null;
  const jwt: InstanceCredential | null =
    match?.[1] && match[1].length <= MAX_JWT ? { kind: "jwt", token: match[1] } : null;
  if (peer?.serialNumber) {
    const authorized = socket.authorized === true;
    if (!authorized && jwt !== null) return jwt;
    // Node prints serials in upper case, possibly zero-padded; the PKI records them lower case without.
    const serial = peer.serialNumber.toLowerCase().replace(/^0+(?=.)/, "");
    return { kind: "mtls", serial, authorized };
  }
  return jwt;
}

function requestInfo(req: FastifyRequest): RequestInfo {
  return { requestId: req.id, source: req.ip };
}

/** The broker (docs/broker.md): instance management for platform agents, and the instances' own endpoints. */
export function brokerRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { broker } = deps;

  /** Authenticates the instance, runs `fn`, and tells the API the broker has written the record. */
  const asInstance = async <T>(
    req: FastifyRequest,
    action: string,
    fn: (who: AuthenticatedInstance) => Promise<T>,
  ): Promise<T> => {
    req.custos.action = action;
    try {
      const who = await broker.authenticate(requestInfo(req), credentialOf(req), action);
      req.custos.resource = instanceResource({ ...who.record, instance: who.record.id });
      const result = await fn(who);
      req.custos.audited = true;
      return result;
    } catch (e) {
      if (wasAudited(e)) req.custos.audited = true;
      throw e;
    }
  };

  /**
   * The instance `:id` for an agent allowed `action` on it, as it now is (lapsed if
   * due: only then). Like the platform's app routes, a caller may not tell an id it
   * has no rights over from an unknown one: `forbidden` either way. An unknown id is
   * checked with `*` for its org, space and app, which only a policy covering that
   * id in every org, space and app allows, and only then answers `not_found`.
   * `auditAs`: the action the broker records a success under, where it is not `action`.
   */
  const authorizedInstance = async (
    req: FastifyRequest<Id>,
    action: "instance:read" | "instance:register" | "instance:deregister",
    auditAs: string = action,
  ) => {
    const record = await broker.find(req.params.id);
    const names = record ?? { org: "*", space: "*", app: "*", id: req.params.id };
    authorize(deps, req, action, instanceResource({ ...names, instance: names.id }), auditAs);
    if (record === undefined) throw new CustosError("not_found", `no instance ${req.params.id}`);
    return broker.current(record);
  };

  return async (app) => {
    // ---- platform agents ---------------------------------------------------------

    app.post<{ Body: RegisterInput }>(
      "/v1/broker/instances",
      {
        config: { serviceAudits: true, created: true },
        schema: {
          body: {
            type: "object",
            required: ["org", "space", "app", "instance"],
            additionalProperties: false,
            properties: { org: label, space: label, app: label, instance: label, ttlSeconds },
          },
        },
      },
      async (req, reply) => {
        const { org, space, app: appName, instance } = req.body;
        authorize(
          deps,
          req,
          "instance:register",
          instanceResource({ org, space, app: appName, instance }),
          "broker.register",
        );
        const registered = await broker.register(actorOf(req), req.body);
        reply.header("cache-control", "no-store");
        return registered;
      },
    );

    app.get<{ Querystring: Record<"org" | "space" | "app" | "state" | "after" | "limit", string | undefined> }>(
      "/v1/broker/instances",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: {
              org: label,
              space: label,
              app: label,
              state: { enum: ["registered", "running", "stopped", "live"] },
              after: label,
              limit: { type: "string", pattern: "^[0-9]{1,4}$" },
            },
          },
        },
      },
      async (req) => {
        const { limit, ...rest } = req.query;
        // Checked before authorising: the resource is built from the names.
        const query = checkListQuery({ ...rest, ...(limit === undefined ? {} : { limit: Number(limit) }) });
        authorize(deps, req, "instance:read", instanceScopeResource(query));
        return { instances: await broker.list(query) };
      },
    );

    app.get<Id>("/v1/broker/instances/:id", { schema: { params: idParam } }, async (req) => {
      return broker.view(await authorizedInstance(req, "instance:read"));
    });

    app.post<Id & { Body: { ttlSeconds: number } }>(
      "/v1/broker/instances/:id/lease",
      {
        config: { serviceAudits: true },
        schema: {
          params: idParam,
          body: { type: "object", required: ["ttlSeconds"], additionalProperties: false, properties: { ttlSeconds } },
        },
      },
      async (req) => {
        // Extending a lease keeps an instance registered: the agent's register right.
        const record = await authorizedInstance(req, "instance:register", "broker.lease.extend");
        return broker.view(await broker.extendLease(actorOf(req), record, req.body.ttlSeconds));
      },
    );

    app.delete<Id>(
      "/v1/broker/instances/:id",
      { config: { serviceAudits: true }, schema: { params: idParam } },
      async (req) => {
        const record = await authorizedInstance(req, "instance:deregister", "broker.deregister");
        return broker.view(await broker.deregister(actorOf(req), record));
      },
    );

    // ---- instances -----------------------------------------------------------------

    app.post<{ Body: { token: string; instance: string; csr: string } }>(
      "/v1/broker/exchange",
      {
        config: exchangeRoute,
        schema: {
          body: {
            type: "object",
            required: ["token", "instance", "csr"],
            additionalProperties: false,
            properties: { token: { type: "string", minLength: 1, maxLength: 512 }, instance: label, csr },
          },
        },
      },
      async (req, reply) => {
        req.custos.action = "broker.exchange";
        try {
          const answer = await broker.exchange(requestInfo(req), req.body);
          req.custos.audited = true;
          reply.header("cache-control", "no-store");
          return answer;
        } catch (e) {
          if (wasAudited(e)) req.custos.audited = true;
          throw e;
        }
      },
    );

    app.post<{ Body: { csr: string } }>(
      "/v1/broker/renew",
      {
        config: instanceRoute,
        schema: {
          body: { type: "object", required: ["csr"], additionalProperties: false, properties: { csr } },
        },
      },
      async (req, reply) => {
        reply.header("cache-control", "no-store");
        return asInstance(req, "broker.renew", (who) => broker.renew(who, req.body.csr));
      },
    );

    app.post("/v1/broker/jwt", { config: instanceRoute, schema: { body: noBody } }, async (req, reply) => {
      reply.header("cache-control", "no-store");
      return asInstance(req, "broker.jwt", (who) => broker.refreshJwt(who));
    });

    app.get("/v1/broker/secrets", { config: instanceRoute }, async (req, reply) => {
      reply.header("cache-control", "no-store");
      return asInstance(req, "broker.secrets.read", async (who) => ({ secrets: await broker.secrets(who) }));
    });

    app.get<{ Params: { "*": string } }>("/v1/broker/secrets/*", { config: instanceRoute }, async (req, reply) => {
      reply.header("cache-control", "no-store");
      return asInstance(req, "broker.secret.read", (who) => broker.secret(who, req.params["*"]));
    });

    app.get("/v1/broker/whoami", { config: instanceRoute }, async (req) =>
      asInstance(req, "broker.whoami", (who) => broker.whoami(who)),
    );

    app.get("/v1/broker/jwks", { config: { public: true } }, async (req, reply) => {
      req.custos.action = "broker.jwks.read";
      reply.header("cache-control", "max-age=300");
      return broker.jwks();
    });

    app.post<{ Body: { token: string } }>(
      "/v1/broker/introspect",
      {
        config: { public: true },
        schema: {
          body: {
            type: "object",
            required: ["token"],
            additionalProperties: false,
            properties: { token: { type: "string", minLength: 1, maxLength: MAX_JWT } },
          },
        },
      },
      async (req, reply) => {
        req.custos.action = "broker.introspect";
        reply.header("cache-control", "no-store");
        return broker.introspect(req.body.token);
      },
    );
  };
}
