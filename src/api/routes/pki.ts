import { X509Certificate } from "node:crypto";
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import { CustosError, isCustosError } from "../../errors/index.js";
import {
  crlToPem,
  type IssueInput,
  isOcspErrorResponse,
  ocspErrorResponse,
  REVOCATION_REASONS,
  type SignInput,
} from "../../pki/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf } from "../context.js";
import { isBase64 } from "../encoding.js";
import { nameParam, stringList } from "../schemas.js";

const publicRoute = { config: { public: true } } as const;
const serviceAudits = { serviceAudits: true } as const;
const DER_CERT = "application/pkix-cert";
const DER_CRL = "application/pkix-crl";
const PEM = "application/x-pem-file";
const OCSP_RESPONSE = "application/ocsp-response";
/** An OCSP request is a few hundred bytes; anything near this is not one. */
const MAX_OCSP_REQUEST = 16 * 1024;

const serialParam = {
  type: "object",
  required: ["serial"],
  properties: { serial: { type: "string", pattern: "^[0-9a-fA-F]{1,64}$" } },
} as const;
const idParam = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "string", pattern: "^(root|int)-[0-9]{1,6}$" } },
} as const;
// No maximum: the role's is the one that counts (ttl_too_long, audited under pki.issue), whatever the TTL.
const ttlSeconds = { type: "integer", minimum: 1 } as const;
const names = {
  commonName: { type: "string", minLength: 1, maxLength: 253 },
  dnsNames: stringList,
  ipAddresses: stringList,
  uris: { type: "array", maxItems: 100, items: { type: "string", minLength: 1, maxLength: 2048 } },
} as const;

type Name = { Params: { name: string } };
type Serial = { Params: { serial: string } };
type Id = { Params: { id: string } };

function send(reply: FastifyReply, type: string, body: string | Buffer): FastifyReply {
  return reply.type(type).header("cache-control", "no-cache").send(body);
}

/** The PKI: public CA material, CRLs and OCSP; roles; issuing, renewal, revocation and inventory. */
export function pkiRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { authority, issuer } = deps.pki;
  const detail = (req: FastifyRequest, details: Record<string, unknown>) => Object.assign(req.custos.details, details);

  return async (app) => {
    // ---- public -------------------------------------------------------------

    app.get("/v1/pki/ca.pem", publicRoute, async (req, reply) => {
      req.custos.action = "pki.ca.read";
      return send(reply, PEM, authority.root().certPem);
    });
    app.get("/v1/pki/ca", publicRoute, async (req, reply) => {
      req.custos.action = "pki.ca.read";
      return send(reply, DER_CERT, new X509Certificate(authority.root().certPem).raw);
    });
    app.get("/v1/pki/chain.pem", publicRoute, async (req, reply) => {
      req.custos.action = "pki.ca.read";
      return send(reply, PEM, authority.caChainPem(authority.active().id));
    });
    app.get("/v1/pki/issuers", publicRoute, async (req) => {
      req.custos.action = "pki.ca.read";
      return { issuers: authority.issuers() };
    });
    app.get<Id>("/v1/pki/issuers/:id/cert", { ...publicRoute, schema: { params: idParam } }, async (req, reply) => {
      req.custos.action = "pki.ca.read";
      return send(reply, DER_CERT, new X509Certificate(authority.issuer(req.params.id).certPem).raw);
    });
    app.get<Id>("/v1/pki/issuers/:id/cert.pem", { ...publicRoute, schema: { params: idParam } }, async (req, reply) => {
      req.custos.action = "pki.ca.read";
      return send(reply, PEM, authority.issuer(req.params.id).certPem);
    });
    app.get<Id>("/v1/pki/issuers/:id/crl", { ...publicRoute, schema: { params: idParam } }, async (req, reply) => {
      req.custos.action = "pki.crl.read";
      return send(reply, DER_CRL, authority.crl(req.params.id));
    });
    app.get<Id>("/v1/pki/issuers/:id/crl.pem", { ...publicRoute, schema: { params: idParam } }, async (req, reply) => {
      req.custos.action = "pki.crl.read";
      return send(reply, PEM, crlToPem(authority.crl(req.params.id)));
    });
    app.get("/v1/pki/crl", publicRoute, async (req, reply) => {
      req.custos.action = "pki.crl.read";
      return send(reply, DER_CRL, authority.crl(authority.active().id));
    });
    app.get("/v1/pki/crl.pem", publicRoute, async (req, reply) => {
      req.custos.action = "pki.crl.read";
      return send(reply, PEM, crlToPem(authority.crl(authority.active().id)));
    });

    // OCSP clients read OCSP, not our JSON errors: failures are OCSP error answers, never cached.
    const ocspError = (reply: FastifyReply, status: "tryLater" | "malformedRequest") =>
      reply.type(OCSP_RESPONSE).header("cache-control", "no-store").send(ocspErrorResponse(status));
    const ocsp = async (req: FastifyRequest, reply: FastifyReply, request: Buffer) => {
      req.custos.action = "pki.ocsp";
      let answer: Buffer;
      try {
        answer = await authority.ocsp(request, (serial) => issuer.find(serial));
      } catch (err) {
        // RFC 6960 tryLater: come back when the HSM can sign.
        req.log.warn({ err }, "OCSP answer failed");
        return ocspError(reply, "tryLater");
      }
      // Only a signed answer may be cached; malformedRequest and unauthorized are unsigned, like tryLater.
      const cacheControl = isOcspErrorResponse(answer) ? "no-store" : "max-age=60";
      return reply.type(OCSP_RESPONSE).header("cache-control", cacheControl).send(answer);
    };
    // The OCSP body parser lives in a scope of its own, so that no other PKI route takes its bytes for a body.
    await app.register(async (scope) => {
      scope.addContentTypeParser(
        "application/ocsp-request",
        { parseAs: "buffer", bodyLimit: MAX_OCSP_REQUEST },
        (_r, body, done) => done(null, body),
      );
      scope.post<{ Body: Buffer }>("/v1/pki/ocsp", publicRoute, async (req, reply) => {
        if (!Buffer.isBuffer(req.body)) {
          throw new CustosError("invalid_request", "an OCSP request is sent as application/ocsp-request");
        }
        return ocsp(req, reply, req.body);
      });
    });
    const ocspGet = {
      config: {
        ...publicRoute.config,
        // A wildcard: base64 may hold '/'.
        wildcard: { name: "request", description: "the DER OCSP request, base64, URL-encoded (RFC 6960 A.1)" },
      },
    };
    app.get<{ Params: { "*": string } }>("/v1/pki/ocsp/*", ocspGet, async (req, reply) => {
      // RFC 6960 A.1: the DER request, base64, URL-encoded, as the path (fastify has URL-decoded it).
      const encoded = req.params["*"];
      if (encoded.length > MAX_OCSP_REQUEST) throw new CustosError("payload_too_large", "OCSP request too large");
      if (!isBase64(encoded)) {
        req.custos.action = "pki.ocsp";
        return ocspError(reply, "malformedRequest");
      }
      return ocsp(req, reply, Buffer.from(encoded, "base64"));
    });

    // ---- roles ----------------------------------------------------------------

    app.put<Name & { Body: Record<string, unknown> }>(
      "/v1/pki/roles/:name",
      { config: serviceAudits, schema: { params: nameParam, body: { type: "object" } } },
      async (req) => {
        // The issuer records a new role as pki.role.create and a change as pki.role.update; so is a refusal or failure.
        const exists = await issuer.getRole(req.params.name).then(
          () => true,
          (e) => !isCustosError(e, "not_found"),
        );
        const auditAs = exists ? "pki.role.update" : "pki.role.create";
        authorize(deps, req, "pki:role-write", `pki/role/${req.params.name}`, auditAs);
        return { role: await issuer.putRole(actorOf(req), req.params.name, req.body) };
      },
    );
    app.get("/v1/pki/roles", async (req) => {
      authorize(deps, req, "pki:read", "pki/role/*");
      return { roles: await issuer.listRoles() };
    });
    app.get<Name>("/v1/pki/roles/:name", { schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "pki:read", `pki/role/${req.params.name}`);
      return { role: await issuer.getRole(req.params.name) };
    });
    app.delete<Name>("/v1/pki/roles/:name", { config: serviceAudits, schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "pki:role-write", `pki/role/${req.params.name}`, "pki.role.delete");
      await issuer.deleteRole(actorOf(req), req.params.name);
      return { deleted: true };
    });

    // ---- issuing ----------------------------------------------------------------

    app.post<Name & { Body: SignInput }>(
      "/v1/pki/roles/:name/sign",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            required: ["csr"],
            additionalProperties: false,
            properties: { csr: { type: "string", minLength: 1, maxLength: 65_536 }, ttlSeconds, ...names },
          },
        },
      },
      async (req) => {
        detail(req, { role: req.params.name, mode: "csr" });
        authorize(deps, req, "pki:issue", `pki/role/${req.params.name}`);
        return issuer.sign(actorOf(req), req.params.name, req.body);
      },
    );
    app.post<Name & { Body: IssueInput }>(
      "/v1/pki/roles/:name/issue",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            additionalProperties: false,
            properties: { ttlSeconds, keyType: { type: "string", maxLength: 16 }, ...names },
          },
        },
      },
      async (req) => {
        detail(req, { role: req.params.name, mode: "generated" });
        authorize(deps, req, "pki:issue", `pki/role/${req.params.name}`);
        return issuer.issue(actorOf(req), req.params.name, req.body);
      },
    );

    // ---- inventory and revocation -------------------------------------------------

    app.get<{
      Querystring: { role?: string; status?: "valid" | "revoked" | "expired"; after?: string; limit?: string };
    }>(
      "/v1/pki/certs",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: {
              role: { type: "string", maxLength: 64 },
              status: { enum: ["valid", "revoked", "expired"] },
              after: { type: "string", pattern: "^[0-9a-f]{1,64}$" },
              limit: { type: "string", pattern: "^[0-9]{1,5}$" },
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "pki:read", "pki/cert/*");
        const { role, status, after, limit } = req.query;
        return {
          certificates: await issuer.list({
            ...(role === undefined ? {} : { role }),
            ...(status === undefined ? {} : { status }),
            ...(after === undefined ? {} : { after }),
            ...(limit === undefined ? {} : { limit: Number(limit) }),
          }),
        };
      },
    );
    app.get<Serial>("/v1/pki/certs/:serial", { schema: { params: serialParam } }, async (req) => {
      authorize(deps, req, "pki:read", `pki/cert/${req.params.serial.toLowerCase()}`);
      return { certificate: await issuer.get(req.params.serial) };
    });
    app.post<Serial & { Body: { reason?: string } }>(
      "/v1/pki/certs/:serial/revoke",
      {
        config: serviceAudits,
        schema: {
          params: serialParam,
          body: {
            type: ["object", "null"],
            additionalProperties: false,
            properties: { reason: { enum: [...REVOCATION_REASONS] } },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "pki:revoke", `pki/cert/${req.params.serial.toLowerCase()}`);
        return { certificate: await issuer.revoke(actorOf(req), req.params.serial, req.body?.reason) };
      },
    );
    app.post<Serial & { Body: { ttlSeconds?: number } }>(
      "/v1/pki/certs/:serial/renew",
      {
        config: serviceAudits,
        schema: {
          params: serialParam,
          body: { type: ["object", "null"], additionalProperties: false, properties: { ttlSeconds } },
        },
      },
      async (req) => {
        // Renewal issues under the certificate's role: it needs the right to issue there.
        const role = await issuer.roleOf(req.params.serial);
        detail(req, { role, mode: "renew", serial: req.params.serial.toLowerCase() });
        authorize(deps, req, "pki:issue", `pki/role/${role}`);
        return issuer.renew(actorOf(req), req.params.serial, req.body?.ttlSeconds);
      },
    );

    app.post<{ Body: { algorithm?: "ecdsa-p256" | "rsa-3072" } | null }>(
      "/v1/pki/issuers/rotate",
      {
        config: serviceAudits,
        schema: {
          body: {
            type: ["object", "null"],
            additionalProperties: false,
            properties: { algorithm: { enum: ["ecdsa-p256", "rsa-3072"] } },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "pki:ca-rotate", "pki/ca", "pki.ca.rotate");
        return authority.rotateIntermediate(actorOf(req), req.body?.algorithm);
      },
    );
  };
}
