import type { AuditEntry, AuditOutcome } from "../store/index.js";

/** The action of the record `custos init` writes first; verification expects it at seq 1 of an initialised store. */
export const INIT_ACTION = "custos.init";

/** Who is acting, as every service sees it: enough to write an audit record. */
export interface Actor {
  /** `user:<name>`, `token:<id>`, `system`, … */
  readonly principal: string;
  readonly requestId: string;
  /** Client IP, or `cli`/`local`. */
  readonly source: string;
}

/** The actor for work Custos does on its own (scheduled rotation, destruction, checkpoints). */
export function systemActor(requestId: string): Actor {
  return { principal: "system", requestId, source: "local" };
}

/** Builds the audit entry for an action by `actor`, stamped now. */
export function auditEntry(
  actor: Actor,
  action: string,
  resource: string,
  details: Readonly<Record<string, unknown>> = {},
  outcome: AuditOutcome = "success",
  errorCode: string | null = null,
): AuditEntry {
  return {
    time: new Date().toISOString(),
    requestId: actor.requestId,
    principal: actor.principal,
    source: actor.source,
    action,
    resource,
    outcome,
    errorCode,
    details,
  };
}

/** Errors a service has recorded in the audit log already: the API must not record them again. */
const audited = new WeakSet<object>();

/** Marks an error as audited by the service that throws it. */
export function markAudited<E extends object>(err: E): E {
  audited.add(err);
  return err;
}

/** Whether a service already audited this error. */
export function wasAudited(err: unknown): boolean {
  return typeof err === "object" && err !== null && audited.has(err);
}
