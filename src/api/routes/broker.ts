import type { FastifyPluginAsync } from "fastify";
import type { ApiDeps } from "../app.js";

/** The broker routes (docs/broker.md). */
export function brokerRoutes(_deps: ApiDeps): FastifyPluginAsync {
  return async () => {};
}
