import { randomUUID } from "node:crypto";
import type { ServerOptions as HttpsOptions } from "node:https";
import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import Fastify, { type FastifyInstance, type FastifyRequest, LogController } from "fastify";
import type { AuditLog } from "../audit/index.js";
import { auditEntry } from "../audit/index.js";
import type { Action, AuthService } from "../auth/index.js";
import type { Broker } from "../broker/index.js";
import { CustosError, type ErrorCode, isCustosError } from "../errors/index.js";
import type { HsmHealth } from "../hsm/index.js";
import type { KmsService } from "../kms/index.js";
import type { Logger } from "../log/index.js";
import type { Authority, Consumers, Issuer } from "../pki/index.js";
import type { Platform } from "../platform/index.js";
import type { Secrets } from "../secrets/index.js";
import type { SshCa } from "../ssh-ca/index.js";
import { actorOf, newRequestState, principalOf } from "./context.js";
import { adminRoutes } from "./routes/admin.js";
import { auditRoutes } from "./routes/audit.js";
import { authRoutes } from "./routes/auth.js";
import { brokerRoutes } from "./routes/broker.js";
import { consumerRoutes } from "./routes/consumers.js";
import { keyRoutes } from "./routes/keys.js";
import { pkiRoutes } from "./routes/pki.js";
import { platformRoutes } from "./routes/platform.js";
import { secretRoutes } from "./routes/secrets.js";
import { sshRoutes } from "./routes/ssh.js";

export interface ApiDeps {
  readonly kms: KmsService;
  readonly auth: AuthService;
  readonly audit: AuditLog;
  readonly pki: { readonly authority: Authority; readonly issuer: Issuer; readonly consumers: Consumers };
  readonly platform: Platform;
  readonly secrets: Secrets;
  readonly broker: Broker;
  readonly ssh: SshCa;
  readonly hsmHealth: () => HsmHealth;
  readonly logger: Logger;
  readonly version: string;
  readonly bodyLimitBytes?: number;
  readonly loginAttemptsPerMinute?: number;
  /** HTTPS options (key, cert, …); omitted for plain HTTP and for `inject()` tests. */
  readonly https?: HttpsOptions;
}

/** Authorises `action` on `resource` for the request's principal and records both for the audit. */
export function authorize(deps: Pick<ApiDeps, "auth">, req: FastifyRequest, action: Action, resource: string): void {
  req.custos.action = action;
  req.custos.resource = resource;
  deps.auth.authorize(principalOf(req), action, resource);
}

/**
 * The challenge a 401 carries (RFC 9110 15.5.2, RFC 6750 3): `invalid_token` when
 * the request presented a credential, the bare scheme when it presented none.
 */
function bearerChallenge(req: FastifyRequest): string {
  return req.headers.authorization ? 'Bearer realm="custos", error="invalid_token"' : 'Bearer realm="custos"';
}

function errorBody(code: ErrorCode, message: string) {
  return { error: { code, message } };
}

/** Maps anything thrown to the CustosError the client will see. */
function toCustosError(err: unknown): CustosError {
  if (isCustosError(err)) return err;
  const e = err as { validation?: unknown; statusCode?: number; code?: string; message?: string };
  if (e.validation) return new CustosError("invalid_request", `invalid request: ${e.message ?? "bad input"}`);
  switch (e.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new CustosError("payload_too_large", "request body too large");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new CustosError("invalid_request", "content type must be application/json");
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new CustosError("invalid_request", "request body is empty");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return new CustosError("invalid_request", "request body is not valid JSON");
    default:
      break;
  }
  if (e.statusCode === 429) return new CustosError("rate_limited", "too many requests; slow down");
  if (e instanceof SyntaxError) return new CustosError("invalid_request", "request body is not valid JSON");
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) {
    return new CustosError("invalid_request", e.message ?? "bad request");
  }
  return new CustosError("internal", "internal error", { cause: err });
}

/**
 * Builds the API. Every request is audited exactly once: state changes and crypto
 * operations by the service (atomically with the change), everything else here —
 * successes in `preSerialization`, failures in the error handler — and a response is
 * sent only after its record is durable.
 */
export async function buildApp(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger,
    // Every request is in the audit log already; per-request log lines would only cost throughput.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: deps.bodyLimitBytes ?? 1024 * 1024,
    genReqId: () => randomUUID(),
    requestIdHeader: false,
    trustProxy: false,
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    ...(deps.https ? { https: deps.https } : {}),
  }) as unknown as FastifyInstance;

  await app.register(swagger, {
    openapi: {
      info: { title: "Custos", version: deps.version, description: "HSM-backed KMS and secrets broker" },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(rateLimit, { global: false });

  app.decorateRequest("custos", null as never);

  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
    req.custos = newRequestState(`${req.method} ${req.routeOptions.url ?? "unknown"}`);
    if (req.routeOptions.config.public) return;
    const header = req.headers.authorization;
    // RFC 9110 11.1: the scheme's name is case-insensitive.
    const match = header ? /^Bearer ([\x21-\x7e]{1,512})$/i.exec(header) : null;
    if (!match?.[1]) throw new CustosError("unauthenticated", "missing or malformed bearer token");
    req.custos.principal = await deps.auth.authenticate(match[1]);
  });

  app.addHook("preSerialization", async (req, reply, payload) => {
    if (req.custos.audited || req.routeOptions.config.serviceAudits) return payload;
    await recordOutcome(req, reply.statusCode < 400 ? "success" : "failure", null);
    return payload;
  });

  async function recordOutcome(req: FastifyRequest, outcome: "success" | "denied" | "failure", code: string | null) {
    const state = req.custos ?? newRequestState(`${req.method} ${req.url}`);
    const details = { method: req.method, route: req.routeOptions.url ?? req.url, ...state.details };
    // Audit actions are dotted (`key.read`) like the services' own; policy actions use colons.
    const action = state.action.replaceAll(":", ".");
    await deps.audit.record(auditEntry(actorOf(req), action, state.resource, details, outcome, code));
    state.audited = true;
  }

  app.setNotFoundHandler(async (req) => {
    req.custos ??= newRequestState(`${req.method} ${req.url}`);
    throw new CustosError("not_found", `no route ${req.method} ${req.url.split("?")[0]}`);
  });

  app.setErrorHandler(async (err, req, reply) => {
    let error = toCustosError(err);
    if (error.code === "internal") req.log.error({ err }, "internal error");
    else if (!error.isClientError) req.log.warn({ code: error.code, ckr: error.ckr }, error.message);
    if (req.custos && !req.custos.audited) {
      const outcome = error.code === "unauthenticated" || error.code === "forbidden" ? "denied" : "failure";
      try {
        await recordOutcome(req, outcome, error.code);
      } catch (auditError) {
        req.log.error({ err: auditError }, "could not audit a failed request");
        error = toCustosError(auditError);
      }
    }
    const message = error.isClientError ? error.message : `${error.message} (request ${req.id})`;
    if (error.status === 401) reply.header("www-authenticate", bearerChallenge(req));
    return reply.status(error.status).send(errorBody(error.code, message));
  });

  app.get("/v1/health", { config: { public: true }, schema: { hide: true } }, async (req, reply) => {
    req.custos.action = "health.read";
    const hsm = deps.hsmHealth();
    const status = hsm.state;
    if (status !== "ok") reply.status(503);
    return { status, version: deps.version, hsm };
  });
  app.get("/v1/docs", { config: { public: true }, schema: { hide: true } }, async (req) => {
    req.custos.action = "docs.read";
    return app.swagger();
  });

  await app.register(authRoutes(deps));
  await app.register(adminRoutes(deps));
  await app.register(keyRoutes(deps));
  await app.register(auditRoutes(deps));
  await app.register(pkiRoutes(deps));
  await app.register(consumerRoutes(deps));
  await app.register(platformRoutes(deps));
  await app.register(secretRoutes(deps));
  await app.register(brokerRoutes(deps));
  await app.register(sshRoutes(deps));
  return app;
}
