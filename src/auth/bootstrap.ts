import { randomUUID } from "node:crypto";
import type { Secret } from "../secret/index.js";
import type { PolicyRecord, TokenRecord, UserRecord } from "../store/index.js";
import { normalizeName } from "./names.js";
import { hashPassword } from "./password.js";
import { ADMIN_POLICY, builtinAdminPolicy } from "./policy.js";
import { generateToken } from "./token.js";

export interface InitialAdminInput {
  readonly name: string;
  /** Optional: without one the admin can only use the token. */
  readonly password?: Secret;
  readonly clock?: () => Date;
}

/** The auth part of `custos init`'s initial state. */
export interface InitialAdmin {
  /** The built-in admin policy. */
  readonly policies: PolicyRecord[];
  readonly admin: UserRecord;
  /** An API token acting for the admin user, without expiry; revoke it once real admins exist. */
  readonly adminToken: TokenRecord;
  /** The token string: shown once, then destroy it. */
  readonly token: Secret;
}

/**
 * Builds the first admin user, the built-in admin policy and a first admin token,
 * for `custos init` to hand to `store.initialize(...)` in one atomic write.
 */
export async function buildInitialAdmin(input: InitialAdminInput): Promise<InitialAdmin> {
  const name = normalizeName("user", input.name);
  const at = (input.clock ?? (() => new Date()))().toISOString();
  const passwordHash = input.password === undefined ? null : await hashPassword(input.password);
  const admin: UserRecord = {
    id: randomUUID(),
    name,
    passwordHash,
    policies: [ADMIN_POLICY],
    disabled: false,
    createdAt: at,
    updatedAt: at,
    revision: 1,
  };
  const { id, token, hash } = generateToken();
  const adminToken: TokenRecord = {
    id,
    hash,
    kind: "api",
    name: "initial admin token",
    userId: admin.id,
    policies: null,
    createdAt: at,
    expiresAt: null,
    revokedAt: null,
    renewal: null,
    parentId: null,
    makerUserId: null,
  };
  return { policies: [builtinAdminPolicy(at)], admin, adminToken, token };
}
