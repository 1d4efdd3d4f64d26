import { randomUUID } from "node:crypto";
import type { Actor } from "../audit/index.js";
import { tryNormalizeName } from "../auth/index.js";
import { CustosError } from "../errors/index.js";
import type { SshSudoGrantRecord, Store } from "../store/index.js";
import { checkReason } from "./role.js";

/** What an admin grants: `<account>@<instance>` on one app's instances, to a user or a group, for a while. */
export interface GrantSudoInput {
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly user?: string;
  readonly group?: string;
  readonly ttlSeconds: number;
  readonly reason: string;
  /** The privileged account on the containers; default `root`. */
  readonly account?: string;
}

export interface SudoGrantView {
  readonly id: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly user: string | null;
  readonly group: string | null;
  readonly account: string;
  readonly reason: string;
  readonly grantedBy: string;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly revokedAt: string | null;
  readonly active: boolean;
}

export const MIN_SUDO_TTL_SECONDS = 60;
export const MAX_SUDO_TTL_SECONDS = 86_400;
/** A POSIX portable user name, as useradd takes it. */
const ACCOUNT_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

const invalid = (message: string) => new CustosError("invalid_request", message);

/** The grant record for `input`, its app, user or group looked up (`not_found` when absent). */
export async function newSudoGrant(
  store: Store,
  actor: Actor,
  input: GrantSudoInput,
  now: Date,
): Promise<SshSudoGrantRecord> {
  if ((input.user === undefined) === (input.group === undefined)) throw invalid("name exactly one of user or group");
  const ttl = input.ttlSeconds;
  if (!Number.isInteger(ttl) || ttl < MIN_SUDO_TTL_SECONDS || ttl > MAX_SUDO_TTL_SECONDS) {
    throw invalid(`ttlSeconds must be a whole number from ${MIN_SUDO_TTL_SECONDS} to ${MAX_SUDO_TTL_SECONDS}`);
  }
  checkReason(input.reason);
  const account = input.account ?? "root";
  if (typeof account !== "string" || !ACCOUNT_RE.test(account)) {
    throw invalid("account must be a POSIX user name (a-z, 0-9, '_', '-'; up to 32 characters)");
  }
  const app = await store.platform.getApp(input.org, input.space, input.app);
  if (app === undefined) throw new CustosError("not_found", `app ${input.org}/${input.space}/${input.app} not found`);
  let subject: { type: "user" | "group"; id: string };
  if (input.user !== undefined) {
    const folded = tryNormalizeName(input.user);
    const user = folded === undefined ? undefined : await store.getUserByName(folded);
    if (user === undefined) throw new CustosError("not_found", `no user ${input.user.slice(0, 64)}`);
    subject = { type: "user", id: user.id };
  } else {
    const folded = tryNormalizeName(input.group ?? "");
    const group = folded === undefined ? undefined : await store.getGroupByName(folded);
    if (group === undefined) throw new CustosError("not_found", `no group ${(input.group ?? "").slice(0, 64)}`);
    subject = { type: "group", id: group.id };
  }
  return {
    id: randomUUID(),
    appId: app.id,
    org: app.org,
    space: app.space,
    app: app.name,
    subjectType: subject.type,
    subjectId: subject.id,
    account,
    reason: input.reason,
    grantedBy: actor.principal,
    createdAt: now.toISOString(),
    expiresAt: new Date(now.getTime() + ttl * 1000).toISOString(),
    revokedAt: null,
  };
}

/** User and group names by id, read once for a set of grant views. */
export async function subjectNames(store: Store): Promise<ReadonlyMap<string, string>> {
  const [users, groups] = await Promise.all([store.listUsers(), store.listGroups()]);
  return new Map([
    ...users.map((u) => [`user:${u.id}`, u.name] as const),
    ...groups.map((g) => [`group:${g.id}`, g.name] as const),
  ]);
}

/** The grant with its user or group by name, and whether it is active now. */
export function sudoGrantView(names: ReadonlyMap<string, string>, g: SshSudoGrantRecord, now: Date): SudoGrantView {
  const subject = names.get(`${g.subjectType}:${g.subjectId}`) ?? `(deleted ${g.subjectType} ${g.subjectId})`;
  return {
    id: g.id,
    org: g.org,
    space: g.space,
    app: g.app,
    user: g.subjectType === "user" ? subject : null,
    group: g.subjectType === "group" ? subject : null,
    account: g.account,
    reason: g.reason,
    grantedBy: g.grantedBy,
    createdAt: g.createdAt,
    expiresAt: g.expiresAt,
    revokedAt: g.revokedAt,
    active: g.revokedAt === null && Date.parse(g.expiresAt) > now.getTime(),
  };
}
