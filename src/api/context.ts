import type { FastifyRequest } from "fastify";
import type { Actor } from "../audit/index.js";
import type { Action, Principal } from "../auth/index.js";

/** What the API knows about a request beyond fastify's own fields. */
export interface RequestState {
  principal: Principal | null;
  /** The action and resource the handler authorised, for the audit record. */
  action: string;
  resource: string;
  /** Request parameters worth auditing (never secrets). */
  details: Record<string, unknown>;
  /** Set once a record for this request is durable, so it is written exactly once. */
  audited: boolean;
}

declare module "fastify" {
  interface FastifyRequest {
    custos: RequestState;
  }
  interface FastifyContextConfig {
    /** No token needed (health, docs, login). */
    public?: boolean;
    /**
     * No token, but an instance's own credential: the client certificate the broker
     * issued it, or its JWT as bearer token (the route checks; the OpenAPI document says so).
     */
    instanceCredential?: boolean;
    /** How the OpenAPI document names the route's wildcard (default: `path`). */
    wildcard?: { readonly name: string; readonly description: string };
    /** The service writes the success record itself, atomically with its change. */
    serviceAudits?: boolean;
    /** The action a refusal before the handler (rate limit, bad body) is audited under; else `METHOD /route`. */
    auditAction?: string;
    /** Answers 201 Created on success (and the OpenAPI document says so). */
    created?: boolean;
  }
}

export function newRequestState(routeAction: string): RequestState {
  return { principal: null, action: routeAction, resource: "", details: {}, audited: false };
}

/** The actor services audit as. Throws if the route forgot to authenticate. */
export function actorOf(req: FastifyRequest): Actor {
  const principal = req.custos.principal;
  return { principal: principal ? principal.display : "anonymous", requestId: req.id, source: req.ip };
}

/** The authenticated principal; routes behind the auth hook always have one. */
export function principalOf(req: FastifyRequest): Principal {
  const principal = req.custos.principal;
  if (!principal) throw new Error("route reached without authentication");
  return principal;
}

export type { Action };
