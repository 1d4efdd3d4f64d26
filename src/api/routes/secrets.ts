import type { FastifyPluginAsync } from "fastify";
import type { ApiDeps } from "../app.js";

/** The secrets routes (docs/broker.md). */
export function secretRoutes(_deps: ApiDeps): FastifyPluginAsync {
  return async () => {};
}
