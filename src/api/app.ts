import { isUtf8 } from "node:buffer";
import { randomUUID } from "node:crypto";
import { STATUS_CODES } from "node:http";
import type { ServerOptions as HttpsOptions } from "node:https";
import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import Fastify, {
  type FastifyContextConfig,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from "fastify";
import type { AuditLog } from "../audit/index.js";
import { auditEntry } from "../audit/index.js";
import type { Action, AuthService } from "../auth/index.js";
import type { Broker } from "../broker/index.js";
import { CustosError, type ErrorCode, isCustosError } from "../errors/index.js";
import type { HsmHealth } from "../hsm/index.js";
import type { KmsService } from "../kms/index.js";
import type { Logger } from "../log/index.js";
import { type Metrics, UNMATCHED_ROUTE } from "../metrics/index.js";
import type { Authority, Consumers, Issuer } from "../pki/index.js";
import type { Platform } from "../platform/index.js";
import type { Secrets } from "../secrets/index.js";
import type { SshCa } from "../ssh-ca/index.js";
import type { Store } from "../store/index.js";
import { actorOf, newRequestState, principalOf } from "./context.js";
import { adminRoutes } from "./routes/admin.js";
import { auditRoutes } from "./routes/audit.js";
import { authRoutes } from "./routes/auth.js";
import { brokerRoutes } from "./routes/broker.js";
import { consumerRoutes } from "./routes/consumers.js";
import { keyRoutes } from "./routes/keys.js";
import { metricsRoutes } from "./routes/metrics.js";
import { pkiRoutes } from "./routes/pki.js";
import { platformRoutes } from "./routes/platform.js";
import { secretRoutes } from "./routes/secrets.js";
import { sshRoutes } from "./routes/ssh.js";
import { storeRoutes } from "./routes/store.js";
import { noBody, noQuery } from "./schemas.js";

export interface ApiDeps {
  readonly kms: KmsService;
  readonly auth: AuthService;
  readonly audit: AuditLog;
  readonly pki: { readonly authority: Authority; readonly issuer: Issuer; readonly consumers: Consumers };
  readonly platform: Platform;
  readonly secrets: Secrets;
  readonly broker: Broker;
  readonly ssh: SshCa;
  /** The store itself, for the one thing done to it whole: a backup copy. */
  readonly store: Pick<Store, "snapshot">;
  readonly hsmHealth: () => HsmHealth;
  /** Where answered requests are counted, and what `GET /v1/metrics` renders. */
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly version: string;
  readonly bodyLimitBytes?: number;
  readonly loginAttemptsPerMinute?: number;
  /** HTTPS options (key, cert, …); omitted for plain HTTP and for `inject()` tests. */
  readonly https?: HttpsOptions;
}

/** Authorises `action` on `resource` for the request's principal and records both for the audit. */
export function authorize(
  deps: Pick<ApiDeps, "auth">,
  req: FastifyRequest,
  action: Action,
  resource: string,
  /**
   * The audit action, served or refused, where the service records the success under
   * another name than the permission; or action and resource, where it records it
   * under another resource too.
   */
  auditAs: string | { readonly action: string; readonly resource: string } = action,
): void {
  const audit = typeof auditAs === "string" ? { action: auditAs, resource } : auditAs;
  req.custos.action = audit.action;
  req.custos.resource = audit.resource;
  deps.auth.authorize(principalOf(req), action, resource);
}

/**
 * The path a request asked for, without its query, which is never audited or
 * echoed: a client may put a token there (Custos reads none from it), and an audit
 * record is kept for good. At most 256 characters.
 */
function pathOf(req: FastifyRequest): string {
  return (req.url.split("?")[0] ?? "").slice(0, 256);
}

/** How the OpenAPI document names a route's wildcard, unless its config says otherwise. */
const WILDCARD = { name: "path", description: "the rest of the path, '/' included" };

/**
 * RFC 6750 section 3: a bearer token that failed gets `invalid_token`, one that lacks
 * the rights `insufficient_scope`; a request with no bearer credential (none, or another
 * scheme) gets the bare challenge.
 */
function bearerChallenge(req: FastifyRequest, error: CustosError): string | null {
  if (error.code === "forbidden") {
    return req.custos.principal ? 'Bearer realm="custos", error="insufficient_scope"' : null;
  }
  if (error.status !== 401) return null;
  return /^bearer /i.test(req.headers.authorization ?? "")
    ? 'Bearer realm="custos", error="invalid_token"'
    : 'Bearer realm="custos"';
}

function errorBody(code: ErrorCode, message: string) {
  return { error: { code, message } };
}

/** The body answering `error`: a server error names the request, so that an operator finds it in the log. */
function answerTo(req: FastifyRequest, error: CustosError) {
  return errorBody(error.code, error.isClientError ? error.message : `${error.message} (request ${req.id})`);
}

/** Logs why a request could not be audited; the audit's error becomes the answer. */
function auditFailed(req: FastifyRequest, auditError: unknown, what: string): CustosError {
  req.log.error({ err: auditError }, `could not audit ${what}`);
  return toCustosError(auditError);
}

/** What fastify attaches to an error of schema validation: ajv's errors and the part of the request. */
interface SchemaFailure {
  readonly validation: readonly { keyword: string; instancePath: string; params: Record<string, unknown> }[];
  readonly validationContext?: string;
  readonly message?: string;
}

/** A name the client sent, quoted for a message: at most 128 characters (a body may hold a 1 MiB member name). */
function quoted(name: string): string {
  return JSON.stringify(name.length > 128 ? `${name.slice(0, 128)}…` : name);
}

/**
 * The refusal of a request its route's schema turned down: ajv's message, except where
 * that would not say what to fix (an unknown member or parameter, a value off a list).
 */
function schemaRefusal(e: SchemaFailure): CustosError {
  const first = e.validation[0];
  const where = `${e.validationContext ?? "body"}${first?.instancePath ?? ""}`;
  const unknown = first?.keyword === "additionalProperties" ? first.params.additionalProperty : undefined;
  const allowed = first?.keyword === "enum" ? first.params.allowedValues : undefined;
  let problem = e.message ?? "bad input";
  if (typeof unknown === "string") {
    problem =
      e.validationContext === "querystring"
        ? `unknown query parameter ${quoted(unknown)}`
        : `${where} has an unknown member ${quoted(unknown)}`;
  } else if (Array.isArray(allowed)) {
    problem = `${where} must be one of ${allowed.map((v) => JSON.stringify(v)).join(", ")}`;
  }
  return new CustosError("invalid_request", `invalid request: ${problem}`);
}

/** Maps anything thrown to the CustosError the client will see. */
function toCustosError(err: unknown): CustosError {
  if (isCustosError(err)) return err;
  const e = err as { validation?: unknown; statusCode?: number; code?: string; message?: string };
  if (Array.isArray(e.validation)) return schemaRefusal(e as SchemaFailure);
  switch (e.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new CustosError("payload_too_large", "request body too large");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new CustosError("invalid_request", "content type must be application/json");
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

/** A `\uD800`–`\uDFFF` escape: the only way a surrogate gets into a body, as UTF-8 has none. */
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;

// String.prototype.isWellFormed is ES2024: in Node since 20, not in our ES2023 lib.
const isWellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed();

/** Whether no string in `value`, member names included, holds a lone surrogate. */
function hasOnlyWellFormedStrings(value: unknown): boolean {
  // A stack, not recursion: a body of nested arrays can be deeper than the call stack.
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const v = pending.pop();
    if (typeof v === "string") {
      if (!isWellFormed(v)) return false;
    } else if (Array.isArray(v)) {
      for (const item of v) pending.push(item);
    } else if (typeof v === "object" && v !== null) {
      for (const [name, member] of Object.entries(v)) {
        if (!isWellFormed(name)) return false;
        pending.push(member);
      }
    }
  }
  return true;
}

function isParsableJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** RFC 9110 7.2: uri-host (an IP literal, or a reg-name, which includes IPv4) and an optional port. */
const HOST = /^(?:\[[0-9A-Za-z:.]+\]|[\w.~!$&'()*+,;=%-]*)(?::[0-9]*)?$/;

/** The expectation node's server meets itself (it answers `100 Continue`), as node matches it. */
const CONTINUE = /(?:^|\W)100-continue(?:$|\W)/i;

/**
 * What is wrong with the request's framing headers, if anything. Node lets these through
 * (it keeps the first of two Host fields and checks no value) or would answer them itself,
 * with no body and no request id; here they are refused like any bad request.
 */
function headerProblem(req: FastifyRequest): string | null {
  const raw = req.raw.rawHeaders;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]?.length === 4 && raw[i]?.toLowerCase() === "host") hosts++;
  // RFC 9112 3.2: exactly one Host, which HTTP/1.1 must send (HTTP/1.0 may not know it).
  if (hosts > 1) return "the request has more than one Host header field";
  const host = req.headers.host;
  if (host === undefined && req.raw.httpVersion !== "1.0") return "the request has no Host header field";
  if (host !== undefined && !HOST.test(host)) return "the Host header field is not a valid host[:port]";
  const expect = req.headers.expect;
  if (expect !== undefined && !CONTINUE.test(expect)) {
    return "the Expect header field asks for an expectation the server can't meet (only 100-continue)";
  }
  // RFC 9110 8.4: a body under a coding we don't decode must not be read as if it were plain.
  const coding = req.headers["content-encoding"];
  if (coding !== undefined && !/^identity$/i.test(coding.trim())) {
    return `content-encoding ${quoted(coding)} is not supported: send the body uncompressed`;
  }
  return null;
}

/** The longest path parameter the router matches, in characters of the raw URL. */
const MAX_PARAM_LENGTH = 1024;

/**
 * Builds the API. Every request is audited exactly once: state changes and crypto
 * operations by the service (atomically with the change), everything else here —
 * successes in `preSerialization` (`onSend` for text and bytes), failures in the error
 * handler — and a response is sent only after its record is durable.
 */
/**
 * Options for node's HTTP server under fastify. Node would answer an HTTP/1.1 request
 * without Host itself (a bare 400): onRequest refuses it instead. A request must
 * arrive whole within 30 s (`requestTimeout` below); node 20 cuts off a stalled body
 * only at headersTimeout (60 s by default), and checks both only every
 * connectionsCheckingInterval (30 s by default): measured, a stalled body held its
 * connection 61–84 s. With these it is cut off at 31 s.
 */
const SERVER_OPTIONS = {
  requireHostHeader: false,
  headersTimeout: 30_000,
  connectionsCheckingInterval: 1_000,
} as const;

export async function buildApp(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger,
    // Every request is in the audit log already; per-request log lines would only cost throughput.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: deps.bodyLimitBytes ?? 1024 * 1024,
    genReqId: () => randomUUID(),
    requestIdHeader: false,
    trustProxy: false,
    // Requests that arrive while the server drains are refused in onRequest, in our shape.
    return503OnClosing: false,
    // A whole request (at most bodyLimit) arrives within this, or the connection is closed:
    // Custos serves clients directly, with no proxy in front to cut off a trickle.
    requestTimeout: 30_000,
    // What node's HTTP parser refuses (headers too large, a malformed line, a trickle past the
    // timeout) never becomes a request; it still gets our error shape, and the connection closes.
    clientErrorHandler: (err, socket) => {
      const code = (err as { code?: string }).code;
      if (code === "ECONNRESET" || !socket.writable) {
        socket.destroy(err);
        return;
      }
      const status = code === "HPE_HEADER_OVERFLOW" ? 431 : code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
      const body = JSON.stringify(errorBody("invalid_request", STATUS_CODES[status] ?? "bad request"));
      // Never a request, so never audited; the id still lets a client's report be matched to the log.
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${randomUUID()}\r\n` +
          `Cache-Control: no-store\r\nConnection: close\r\n\r\n${body}`,
      );
    },
    // Room for every name the API accepts (the longest is 256 characters), percent-encoded;
    // the route schemas hold each parameter to its own limit.
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // A URL the router refuses is refused like any bad request: our error shape, id and audit.
    frameworkErrors: (error, req, untypedReply) => {
      const reply = untypedReply as unknown as FastifyReply;
      const tooLong = error.code === "FST_ERR_MAX_PARAM_LENGTH";
      req.custos = newRequestState(`${req.method} (${tooLong ? "overlong URL" : "undecodable URL"})`);
      reply.header("x-request-id", req.id).header("cache-control", "no-store");
      const refusal = new CustosError(
        "invalid_request",
        tooLong
          ? `a segment of the URL path is longer than ${MAX_PARAM_LENGTH} characters`
          : "the URL is not valid percent-encoding",
      );
      recordOutcome(req, "failure", refusal.code)
        .then(() => reply.status(refusal.status).send(answerTo(req, refusal)))
        .catch((auditError: unknown) => {
          const failed = auditFailed(req, auditError, "a refused request");
          reply.status(failed.status).send(answerTo(req, failed));
        });
    },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    ...(deps.https ? { https: { ...deps.https, ...SERVER_OPTIONS } } : { http: SERVER_OPTIONS }),
  }) as unknown as FastifyInstance;

  // Node answers an Expect other than 100-continue itself (a bare 417) unless someone
  // listens: the request goes the usual way instead, and onRequest refuses it.
  app.server.on("checkExpectation", (req, res) => app.server.emit("request", req, res));
  // Set as the server starts to drain: what arrives after is refused (and audited) in onRequest.
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
  });

  await app.register(swagger, {
    openapi: {
      info: { title: "Custos", version: deps.version, description: "HSM-backed KMS and secrets broker" },
      components: {
        securitySchemes: {
          bearer: { type: "http", scheme: "bearer" },
          instanceJwt: {
            type: "http",
            scheme: "bearer",
            bearerFormat: "JWT",
            description:
              "A broker instance's JWT; or instead, over mutual TLS, the client certificate the broker issued it " +
              "(OpenAPI 3.0 can't name that scheme)",
          },
        },
      },
      security: [{ bearer: [] }],
    },
    // The OpenAPI document says what the route config says, rather than every route's schema:
    // a public route needs no token (an empty requirement overrides the document-wide bearer
    // one), an instance's route its own credential, and a creating route answers 201.
    transform: ({ schema, url, route }) => {
      const config = route.config as FastifyContextConfig | undefined;
      let security: Array<Record<string, string[]>> | undefined;
      if (config?.instanceCredential === true) security = [{ instanceJwt: [] }];
      else if (config?.public === true) security = [];
      // A wildcard (the rest of the path, '/' included) becomes a named path parameter that the document defines.
      const wildcard = url.endsWith("*") ? (config?.wildcard ?? WILDCARD) : undefined;
      return {
        url: wildcard ? `${url.slice(0, -1)}{${wildcard.name}}` : url,
        schema: {
          ...schema,
          ...(wildcard
            ? {
                params: {
                  type: "object",
                  required: [wildcard.name],
                  properties: { [wildcard.name]: { type: "string", description: wildcard.description } },
                },
              }
            : {}),
          ...(security !== undefined ? { security } : {}),
          ...(config?.created === true ? { response: { 201: { description: "Created", type: "object" } } } : {}),
        },
      };
    },
  });
  await app.register(rateLimit, { global: false });
  // Set before the handler runs, so that an error still answers with its own status.
  const answerCreated = async (_req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    reply.status(201);
  };
  app.addHook("onRoute", (route) => {
    // A parameter or body a route doesn't read is refused, as an unknown member is: a mistyped filter must not
    // silently act on everything, nor a DELETE's body be taken for a condition it never checked.
    const schema = route.schema ?? {};
    const methods = [route.method].flat();
    route.schema = {
      ...schema,
      querystring: schema.querystring ?? noQuery,
      ...(schema.body === undefined && methods.includes("DELETE") ? { body: noBody } : {}),
    };
  });
  app.addHook("onRoute", (route) => {
    if ((route.config as FastifyContextConfig | undefined)?.created !== true) return;
    const existing = route.preHandler === undefined ? [] : [route.preHandler].flat();
    route.preHandler = [...existing, answerCreated];
  });

  app.decorateRequest("custos", null as never);

  // JSON bodies must be UTF-8 (RFC 8259 8.1): the default parser would turn a stray
  // byte into U+FFFD and store the altered value as if it had been sent.
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (req, body, done) => {
    const bytes = body as Buffer;
    // Many clients label an empty POST as JSON: it is no body, which a route that takes
    // none accepts and any other refuses through its schema.
    if (bytes.length === 0) {
      done(null, undefined);
      return;
    }
    if (!isUtf8(bytes)) {
      done(new CustosError("invalid_request", "request body is not UTF-8"), undefined);
      return;
    }
    const text = bytes.toString("utf8");
    void parseJson(req, text, (err, value) => {
      // The parser refuses members that would reach object prototypes (__proto__, or
      // prototype within constructor) with the same error as broken JSON: tell them apart.
      if (err && isParsableJson(text)) {
        done(
          new CustosError(
            "invalid_request",
            "request body uses a reserved member name (__proto__ or constructor.prototype)",
          ),
          undefined,
        );
      } else if (err) {
        done(err, undefined);
      } else if (typeof value !== "object" || value === null || Array.isArray(value)) {
        // Every body the API takes is an object; a bare `null` would pass for no body at all.
        done(new CustosError("invalid_request", "request body must be a JSON object"), undefined);
      } else if (SURROGATE_ESCAPE.test(text) && !hasOnlyWellFormedStrings(value)) {
        // RFC 8259 8.2 allows the escape, but no UTF-8 holds it: the store would keep U+FFFD instead.
        done(
          new CustosError(
            "invalid_request",
            "request body holds a lone surrogate (an unpaired \\uD800-\\uDFFF escape)",
          ),
          undefined,
        );
      } else done(null, value);
    });
  });

  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
    // Answers carry tokens, keys and secrets: no cache keeps one unless a route says so (CA material, CRLs).
    reply.header("cache-control", "no-store");
    req.custos = newRequestState(
      req.routeOptions.config.auditAction ?? `${req.method} ${req.routeOptions.url ?? pathOf(req)}`,
    );
    if (closing) {
      reply.header("connection", "close");
      throw new CustosError("shutting_down", "the server is shutting down; send the request again");
    }
    const problem = headerProblem(req);
    if (problem !== null) throw new CustosError("invalid_request", problem);
    if (req.routeOptions.config.public) return;
    const header = req.headers.authorization;
    // RFC 9110 11.1: the scheme's name is case-insensitive; RFC 6750 2.1: one or more spaces follow it.
    const match = header ? /^Bearer +([\x21-\x7e]{1,512})$/i.exec(header) : null;
    if (!match?.[1]) throw new CustosError("unauthenticated", "missing or malformed bearer token");
    req.custos.principal = await deps.auth.authenticate(match[1]);
  });

  // A callback hook, not an async one: it runs for every request, and has nothing to wait for.
  app.addHook("onResponse", (req, reply, done) => {
    deps.metrics.observeRequest(
      req.method,
      req.routeOptions.url ?? UNMATCHED_ROUTE,
      reply.statusCode,
      reply.elapsedTime / 1000,
    );
    done();
  });

  app.addHook("preSerialization", async (req, reply, payload) => {
    if (req.custos.audited || req.routeOptions.config.serviceAudits) return payload;
    await recordOutcome(req, reply.statusCode < 400 ? "success" : "failure", null);
    return payload;
  });

  // Text and byte answers (PEM, DER, CRLs, OCSP, KRLs) skip preSerialization: they are
  // recorded here, just before they leave. An audit failure replaces the answer; it is
  // not thrown, because the error handler's own answer would pass through here again.
  app.addHook("onSend", async (req, reply, payload) => {
    if (!req.custos || req.custos.audited || req.routeOptions.config.serviceAudits) return payload;
    try {
      await recordOutcome(req, reply.statusCode < 400 ? "success" : "failure", null);
      return payload;
    } catch (auditError) {
      req.custos.audited = true;
      const failed = auditFailed(req, auditError, "a request");
      reply
        .status(failed.status)
        .header("content-type", "application/json; charset=utf-8")
        .header("cache-control", "no-store");
      return JSON.stringify(answerTo(req, failed));
    }
  });

  async function recordOutcome(req: FastifyRequest, outcome: "success" | "denied" | "failure", code: string | null) {
    const state = req.custos ?? newRequestState(`${req.method} ${pathOf(req)}`);
    const details = { method: req.method, route: req.routeOptions.url ?? pathOf(req), ...state.details };
    // Audit actions are dotted (`key.read`) like the services' own; policy actions use colons. A
    // request refused before its route authorised it (its input, its token) keeps the route's
    // own name (`POST /v1/keys/:name/encrypt`) as its action and its path as what it was on.
    const routeNamed = state.action.includes(" ");
    const action = routeNamed ? state.action : state.action.replaceAll(":", ".");
    const resource = state.resource === "" && routeNamed ? pathOf(req) : state.resource;
    await deps.audit.record(auditEntry(actorOf(req), action, resource, details, outcome, code));
    state.audited = true;
  }

  app.setNotFoundHandler(async (req) => {
    req.custos ??= newRequestState(`${req.method} ${pathOf(req)}`);
    throw new CustosError("not_found", `no route ${req.method} ${pathOf(req)}`);
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
        // The answer says the record failed: the hooks it passes on its way out must not try again.
        req.custos.audited = true;
        error = auditFailed(req, auditError, "a failed request");
      }
    }
    const challenge = bearerChallenge(req, error);
    if (challenge) reply.header("www-authenticate", challenge);
    // A route that set a cache lifetime for its answer did so for a success, not for this.
    reply.header("cache-control", "no-store");
    return reply.status(error.status).send(answerTo(req, error));
  });

  app.get("/v1/health", { config: { public: true } }, async (req, reply) => {
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
  await app.register(storeRoutes(deps));
  await app.register(metricsRoutes(deps));
  return app;
}
