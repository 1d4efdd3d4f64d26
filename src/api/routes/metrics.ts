import type { FastifyPluginAsync } from "fastify";
import type { GaugeSample } from "../../metrics/index.js";
import { type ApiDeps, authorize } from "../app.js";

const HSM_STATES = ["ok", "degraded", "unavailable"] as const;

/**
 * `GET /v1/metrics`, the Prometheus exposition (`metrics:read` on `metrics`), and the
 * gauges read from the services when it is scraped. None of them waits on the HSM, so a
 * scrape answers, and says so, while the HSM is down.
 */
export function metricsRoutes(deps: ApiDeps): FastifyPluginAsync {
  const { metrics } = deps;
  metrics.gauge("custos_hsm_up", "1 when the HSM's health state is ok, else 0.", [], () => [
    [{}, deps.hsmHealth().state === "ok" ? 1 : 0],
  ]);
  metrics.gauge("custos_hsm_state", "1 for the HSM's current health state, 0 for the others.", ["state"], () => {
    const current = deps.hsmHealth().state;
    return HSM_STATES.map((state): GaugeSample => [{ state }, state === current ? 1 : 0]);
  });
  metrics.gauge("custos_hsm_sessions_open", "HSM sessions open in the pool.", [], () => [
    [{}, deps.hsmHealth().sessions.open],
  ]);
  metrics.gauge("custos_hsm_sessions_max", "The HSM session pool's size.", [], () => [
    [{}, deps.hsmHealth().sessions.size],
  ]);
  metrics.gauge(
    "custos_ca_not_after_timestamp_seconds",
    "When each CA certificate expires (Unix seconds), by CA id, name, kind and state.",
    ["ca", "name", "kind", "state"],
    () =>
      deps.pki.authority
        .issuers()
        .map(
          (ca): GaugeSample => [
            { ca: ca.id, name: ca.name, kind: ca.kind, state: ca.state },
            Date.parse(ca.notAfter) / 1000,
          ],
        ),
  );
  metrics.gauge("custos_audit_head_seq", "The newest audit record's sequence number.", [], async () => [
    [{}, await deps.audit.headSeq()],
  ]);
  metrics.gauge(
    "custos_audit_checkpoint_seq",
    "The sequence number the newest signed audit checkpoint covers; a growing gap to the head means checkpoints fail.",
    [],
    async () => [[{}, await deps.audit.checkpointedSeq()]],
  );

  return async (app) => {
    app.get("/v1/metrics", async (req, reply) => {
      authorize(deps, req, "metrics:read", "metrics");
      return reply.type(metrics.contentType).send(await metrics.render());
    });
  };
}
