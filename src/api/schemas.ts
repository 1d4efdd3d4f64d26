/** JSON schemas shared by the route plugins (fastify validates with them, @fastify/swagger documents them). */

export const nameParam = {
  type: "object",
  required: ["name"],
  properties: { name: { type: "string", minLength: 1, maxLength: 128 } },
} as const;

export const idParam = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "string", minLength: 1, maxLength: 128 } },
} as const;

export const context = {
  type: "object",
  maxProperties: 64,
  additionalProperties: { type: "string", minLength: 1, maxLength: 256 },
  propertyNames: { minLength: 1, maxLength: 256 },
} as const;

export const base64 = { type: "string", maxLength: 1_000_000 } as const;

export const stringList = {
  type: "array",
  maxItems: 100,
  items: { type: "string", minLength: 1, maxLength: 128 },
} as const;

/**
 * A body that is either one item or `{ items: [...] }` of the same item shape. (The
 * handler refuses a body that mixes both; ajv's `oneOf` errors are unreadable.)
 */
export function singleOrBatch(properties: Record<string, unknown>, required: readonly string[] = []) {
  const item = { type: "object", additionalProperties: false, required, properties };
  return {
    type: "object",
    additionalProperties: false,
    properties: { ...properties, items: { type: "array", minItems: 1, maxItems: 1000, items: item } },
  } as const;
}

/**
 * The body of a POST that takes none: nothing, or `{}`. A request without a body is
 * validated as `null` (fastify's rule), hence the type; a body of JSON `null` never gets
 * here, the JSON parser refuses every body that is not an object.
 */
export const noBody = { type: ["object", "null"], additionalProperties: false } as const;

/** The query string of a route that reads none: any parameter is refused, by name. */
export const noQuery = { type: "object", additionalProperties: false } as const;
