import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { CustosError, isCustosError } from "../../errors/index.js";
import { checkNotServiceKeyName } from "../../kms/index.js";
import type { Secret } from "../../secret/index.js";
import { type ApiDeps, authorize } from "../app.js";
import { actorOf } from "../context.js";
import { fromBase64 } from "../encoding.js";
import { base64, context, nameParam, noBody, singleOrBatch } from "../schemas.js";

type Name = { Params: { name: string } };
type Context = Record<string, string>;

/** Reads a Secret out as base64 for the one caller entitled to it, then zeroes it. */
function revealBase64(secret: Secret): string {
  try {
    return secret.expose().toString("base64");
  } finally {
    secret.destroy();
  }
}

interface BatchBody<T> {
  items?: T[];
}

/** `{ items }` or a single item, never both. */
function itemsOf<T extends object>(body: T & BatchBody<T>): { batch: T[] | null; single: T } {
  if (body.items === undefined) return { batch: null, single: body };
  if (Object.keys(body).length > 1) throw new CustosError("invalid_request", "send either one item or items, not both");
  return { batch: body.items, single: body };
}

type BatchResult<T> = { ok: true; value: T } | { ok: false; error: { code: string; message: string } };

function batchView<T>(results: readonly BatchResult<T>[], view: (value: T) => unknown) {
  return { items: results.map((r) => (r.ok ? view(r.value) : { error: r.error })) };
}

const purpose = { enum: ["encrypt", "sign"] } as const;
const algorithm = { enum: ["aes-256-gcm", "ecdsa-p256", "ed25519", "rsa-3072"] } as const;
const version = { type: "integer", minimum: 1, maximum: 2_147_483_647 } as const;
/**
 * Any string: whether it is a ciphertext, its length included, is the decoder's to say,
 * with the one `decryption_failed` (per item in a batch). The body limit bounds it.
 */
const ciphertext = { type: "string" } as const;
const serviceAudits = { serviceAudits: true } as const;

/** Named keys: management and cryptographic operations. */
export function keyRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { kms } = deps;
  const audited = (req: FastifyRequest, details: Record<string, unknown>) => Object.assign(req.custos.details, details);

  return async (app) => {
    app.get<{ Querystring: { prefix?: string; after?: string; limit?: number } }>(
      "/v1/keys",
      {
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: {
              prefix: { type: "string", maxLength: 128 },
              after: { type: "string", maxLength: 128 },
              limit: { type: "string", pattern: "^[0-9]{1,4}$" },
            },
          },
        },
      },
      async (req) => {
        const { prefix, after, limit } = req.query;
        // A policy may allow listing under a prefix, but the prefix is a query value: never audited or echoed.
        try {
          authorize(deps, req, "key:read", `key/${prefix ?? ""}*`, { action: "key:read", resource: "key/*" });
        } catch (e) {
          if (prefix === undefined || !isCustosError(e, "forbidden")) throw e;
          throw new CustosError("forbidden", "not allowed: key:read on the keys under that prefix");
        }
        const query = {
          ...(prefix !== undefined ? { prefix } : {}),
          ...(after !== undefined ? { after } : {}),
          ...(limit !== undefined ? { limit: Number(limit) } : {}),
        };
        return { keys: await kms.listKeys(actorOf(req), query) };
      },
    );

    app.post<{
      Body: {
        name: string;
        purpose: "encrypt" | "sign";
        algorithm?: "aes-256-gcm" | "ecdsa-p256" | "ed25519" | "rsa-3072";
        description?: string;
        rotationPeriodSeconds?: number;
      };
    }>(
      "/v1/keys",
      {
        config: { ...serviceAudits, created: true },
        schema: {
          body: {
            type: "object",
            required: ["name", "purpose"],
            additionalProperties: false,
            properties: {
              name: { type: "string", minLength: 1, maxLength: 128 },
              purpose,
              algorithm,
              description: { type: "string", maxLength: 1024 },
              rotationPeriodSeconds: { type: "integer", minimum: 3600 },
            },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "key:create", `key/${req.body.name}`);
        // The services make theirs through the KMS itself: the API must not let anyone take their names first.
        checkNotServiceKeyName(req.body.name);
        return kms.createKey(actorOf(req), req.body);
      },
    );

    app.get<Name>("/v1/keys/:name", { schema: { params: nameParam } }, async (req) => {
      authorize(deps, req, "key:read", `key/${req.params.name}`);
      return kms.getKey(actorOf(req), req.params.name);
    });

    app.patch<
      Name & {
        Body: {
          description?: string;
          rotationPeriodSeconds?: number | null;
          minDecryptionVersion?: number;
          enabled?: boolean;
        };
      }
    >(
      "/v1/keys/:name",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            additionalProperties: false,
            minProperties: 1,
            properties: {
              description: { type: "string", maxLength: 1024 },
              // One schema, not anyOf: ajv would report every branch's failure in one confusing line.
              rotationPeriodSeconds: { type: ["integer", "null"], minimum: 3600 },
              minDecryptionVersion: version,
              enabled: { type: "boolean" },
            },
          },
        },
      },
      async (req) => {
        const { name } = req.params;
        const { enabled, ...settings } = req.body;
        // Every permission the change needs is checked before any of it is made. The state
        // change comes first so that the last one checked, which a refusal is audited under,
        // is the service's action: key.update when settings change, else key.enable/disable.
        if (enabled !== undefined) authorize(deps, req, enabled ? "key:enable" : "key:disable", `key/${name}`);
        if (Object.keys(settings).length > 0) authorize(deps, req, "key:update", `key/${name}`);
        return kms.updateKey(actorOf(req), name, req.body);
      },
    );

    app.delete<Name & { Querystring: { waitingSeconds?: string; immediate?: "true" | "false" } }>(
      "/v1/keys/:name",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: {
              waitingSeconds: { type: "string", pattern: "^[0-9]{1,9}$" },
              immediate: { enum: ["true", "false"] },
            },
          },
        },
      },
      async (req) => {
        const { name } = req.params;
        const immediate = req.query.immediate === "true";
        // Both modes need key:destroy; a scheduling is audited, served or refused, as the service records it.
        authorize(deps, req, "key:destroy", `key/${name}`, immediate ? "key.destroy" : "key.schedule-destruction");
        const actor = actorOf(req);
        if (immediate) {
          if (req.query.waitingSeconds !== undefined) {
            throw new CustosError("invalid_request", "immediate and waitingSeconds exclude each other");
          }
          return kms.destroyKey(actor, name);
        }
        const waitingSeconds = req.query.waitingSeconds === undefined ? undefined : Number(req.query.waitingSeconds);
        return kms.scheduleDestruction(actor, name, waitingSeconds === undefined ? {} : { waitingSeconds });
      },
    );

    app.post<Name>(
      "/v1/keys/:name/cancel-destruction",
      { config: serviceAudits, schema: { params: nameParam, body: noBody } },
      async (req) => {
        authorize(deps, req, "key:cancel-destruction", `key/${req.params.name}`);
        return kms.cancelDestruction(actorOf(req), req.params.name);
      },
    );

    app.post<Name>(
      "/v1/keys/:name/rotate",
      { config: serviceAudits, schema: { params: nameParam, body: noBody } },
      async (req) => {
        authorize(deps, req, "key:rotate", `key/${req.params.name}`);
        return kms.rotateKey(actorOf(req), req.params.name);
      },
    );

    type EncryptItem = { plaintext: string; context?: Context; version?: number };
    app.post<Name & { Body: EncryptItem & BatchBody<EncryptItem> }>(
      "/v1/keys/:name/encrypt",
      {
        config: serviceAudits,
        schema: { params: nameParam, body: singleOrBatch({ plaintext: base64, context, version }, ["plaintext"]) },
      },
      async (req) => {
        const { name } = req.params;
        authorize(deps, req, "key:encrypt", `key/${name}`);
        const toInput = (i: EncryptItem, field: string) => ({ ...i, plaintext: fromBase64(i.plaintext, field) });
        const { batch, single } = itemsOf(req.body);
        // A malformed batch (bad base64 included) is refused whole, as a schema error would be;
        // only what a well-formed item meets in the KMS comes back per item.
        if (batch) {
          const inputs = batch.map((item, i) => toInput(item, `items[${i}].plaintext`));
          return batchView(await kms.encryptBatch(actorOf(req), name, inputs), (r) => r);
        }
        if (single.plaintext === undefined) throw new CustosError("invalid_request", "plaintext is required");
        return kms.encrypt(actorOf(req), name, toInput(single, "plaintext"));
      },
    );

    type DecryptItem = { ciphertext: string; context?: Context };
    const decryptBody = singleOrBatch({ ciphertext, context }, ["ciphertext"]);

    app.post<Name & { Body: DecryptItem & BatchBody<DecryptItem> }>(
      "/v1/keys/:name/decrypt",
      { config: serviceAudits, schema: { params: nameParam, body: decryptBody } },
      async (req) => {
        const { name } = req.params;
        authorize(deps, req, "key:decrypt", `key/${name}`);
        const view = (r: { plaintext: Secret; version: number }) => ({
          plaintext: revealBase64(r.plaintext),
          version: r.version,
        });
        const { batch, single } = itemsOf(req.body);
        if (batch) return batchView(await kms.decryptBatch(actorOf(req), name, batch), view);
        if (single.ciphertext === undefined) throw new CustosError("invalid_request", "ciphertext is required");
        return view(await kms.decrypt(actorOf(req), name, single));
      },
    );

    app.post<Name & { Body: DecryptItem & BatchBody<DecryptItem> }>(
      "/v1/keys/:name/rewrap",
      { config: serviceAudits, schema: { params: nameParam, body: decryptBody } },
      async (req) => {
        const { name } = req.params;
        authorize(deps, req, "key:rewrap", `key/${name}`);
        const { batch, single } = itemsOf(req.body);
        if (batch) return batchView(await kms.rewrapBatch(actorOf(req), name, batch), (r) => r);
        if (single.ciphertext === undefined) throw new CustosError("invalid_request", "ciphertext is required");
        return kms.rewrap(actorOf(req), name, single);
      },
    );

    type DataKeyItem = { context?: Context; bytes?: 16 | 24 | 32; plaintext?: boolean };
    app.post<Name & { Body: DataKeyItem & BatchBody<DataKeyItem> }>(
      "/v1/keys/:name/datakey",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          body: singleOrBatch({ context, bytes: { enum: [16, 24, 32] }, plaintext: { type: "boolean" } }),
        },
      },
      async (req) => {
        const { name } = req.params;
        authorize(deps, req, "key:datakey", `key/${name}`);
        const toInput = (i: DataKeyItem) => ({
          ...(i.context ? { context: i.context } : {}),
          ...(i.bytes ? { bytes: i.bytes } : {}),
          withPlaintext: i.plaintext ?? true,
        });
        const view = (r: { plaintext?: Secret; ciphertext: string; version: number }) => ({
          ...(r.plaintext ? { plaintext: revealBase64(r.plaintext) } : {}),
          ciphertext: r.ciphertext,
          version: r.version,
        });
        const { batch, single } = itemsOf(req.body);
        if (batch) return batchView(await kms.generateDataKeyBatch(actorOf(req), name, batch.map(toInput)), view);
        return view(await kms.generateDataKey(actorOf(req), name, toInput(single)));
      },
    );

    app.post<Name & { Body: { message: string; version?: number } }>(
      "/v1/keys/:name/sign",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            required: ["message"],
            additionalProperties: false,
            properties: { message: base64, version },
          },
        },
      },
      async (req) => {
        const { name } = req.params;
        authorize(deps, req, "key:sign", `key/${name}`);
        const r = await kms.sign(actorOf(req), name, { ...req.body, message: fromBase64(req.body.message, "message") });
        return { signature: r.signature.toString("base64"), version: r.version, scheme: r.scheme };
      },
    );

    app.post<Name & { Body: { message: string; signature: string; version?: number } }>(
      "/v1/keys/:name/verify",
      {
        config: serviceAudits,
        schema: {
          params: nameParam,
          body: {
            type: "object",
            required: ["message", "signature"],
            additionalProperties: false,
            properties: { message: base64, signature: { type: "string", maxLength: 4096 }, version },
          },
        },
      },
      async (req) => {
        const { name } = req.params;
        authorize(deps, req, "key:verify", `key/${name}`);
        return kms.verify(actorOf(req), name, {
          ...req.body,
          message: fromBase64(req.body.message, "message"),
          signature: fromBase64(req.body.signature, "signature"),
        });
      },
    );

    app.post<{ Body: { bytes: number } }>(
      "/v1/random",
      {
        config: serviceAudits,
        schema: {
          body: {
            type: "object",
            required: ["bytes"],
            additionalProperties: false,
            properties: { bytes: { type: "integer", minimum: 1, maximum: 1024 } },
          },
        },
      },
      async (req) => {
        authorize(deps, req, "random:generate", "random");
        audited(req, { bytes: req.body.bytes });
        return { random: (await kms.random(actorOf(req), req.body.bytes)).toString("base64") };
      },
    );
  };
}
