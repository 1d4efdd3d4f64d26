/**
 * The action vocabulary: every operation Custos authorises has one name here.
 * To add an area's actions (pki, ssh, broker, …), append them to `ACTIONS` and,
 * when they must need admin rights, to `PRIVILEGED_ACTIONS`; the `Action` type,
 * policy validation and wildcard matching all follow from these two lists.
 */

/** Every action, grouped by area. */
export const ACTIONS = [
  // kms
  "key:create",
  "key:read",
  "key:update",
  "key:rotate",
  "key:enable",
  "key:disable",
  "key:cancel-destruction",
  "key:destroy",
  "key:encrypt",
  "key:decrypt",
  "key:rewrap",
  "key:datakey",
  "key:sign",
  "key:verify",
  "random:generate",
  // pki: resources `pki/role/<role>`, `pki/cert/<serial>`, `pki/ca`
  "pki:read",
  "pki:issue",
  "pki:revoke",
  "pki:role-write",
  "pki:ca-rotate",
  // certificate consumers (the router) and their rotation: resource `cert/<consumer>`
  "cert:read",
  "cert:write",
  "cert:rotate",
  "cert:agent",
  // platform model: resources `org/<org>`, `org/<org>/space/<space>`, `org/<org>/space/<space>/app/<app>`
  "platform:read",
  "platform:write",
  // secrets: resources `secret/<org>/<space>/<app>/<path>` and `secret/shared/<path>`
  "secret:list",
  "secret:read",
  "secret:write",
  "secret:delete",
  "secret:destroy",
  "secret:grant",
  // broker, for platform agents: resource `instance/<org>/<space>/<app>/<instance>`
  "instance:register",
  "instance:deregister",
  "instance:read",
  // ssh: resources `ssh/role/<role>`, `ssh/cert/<serial>`, `ssh/key/<fingerprint>`, `ssh/sudo/<org>/<space>/<app>`
  "ssh:sign",
  "ssh:read",
  "ssh:revoke",
  "ssh:role-write",
  "ssh:sudo-grant",
  "ssh:sudo-revoke",
  "ssh:sudo-read",
  // identities and access
  "user:read",
  "user:write",
  "group:read",
  "group:write",
  "token:create",
  "token:read",
  "token:revoke",
  "token:renew",
  "policy:read",
  "policy:write",
  "sudo:grant",
  "sudo:revoke",
  "sudo:read",
  // audit
  "audit:read",
  "audit:verify",
  // the audit HMAC of a value: an oracle for guesses at secret values, so not part of audit:read
  "audit:hash",
  // the whole store copied out (a backup): resource `store`
  "store:backup",
  // the Prometheus exposition: resource `metrics`
  "metrics:read",
] as const;

/** An operation that can be authorised. */
export type Action = (typeof ACTIONS)[number];

/**
 * Actions only admins may perform (see `authorize` for the rule). Wildcards in a
 * policy never reach these.
 */
export const PRIVILEGED_ACTIONS: readonly Action[] = [
  "key:destroy",
  "pki:role-write",
  "pki:ca-rotate",
  "secret:grant",
  "ssh:role-write",
  "ssh:sudo-grant",
  "ssh:sudo-revoke",
  "policy:write",
  "sudo:grant",
  "sudo:revoke",
  "sudo:read",
  "audit:read",
  "audit:verify",
  "audit:hash",
  "store:backup",
];

const actionSet: ReadonlySet<string> = new Set(ACTIONS);
const privilegedSet: ReadonlySet<string> = new Set(PRIVILEGED_ACTIONS);

/** True for a name in the vocabulary. */
export function isAction(value: string): value is Action {
  return actionSet.has(value);
}

/** True for an action that needs admin rights. */
export function isPrivilegedAction(action: string): boolean {
  return privilegedSet.has(action);
}
