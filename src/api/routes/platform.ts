import type { FastifyPluginAsync } from "fastify";
import type { ApiDeps } from "../app.js";

/** The platform routes (docs/broker.md). */
export function platformRoutes(_deps: ApiDeps): FastifyPluginAsync {
  return async () => {};
}
