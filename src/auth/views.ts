import type { GroupRecord, TokenRecord, UserRecord } from "../store/index.js";

/**
 * The forms of records that audit diffs carry: everything but credentials. A
 * password hash or token hash must never reach the audit journal, so diffs are
 * built only from these.
 */

/** A user without its password hash. */
export interface UserInfo {
  readonly id: string;
  readonly name: string;
  readonly hasPassword: boolean;
  readonly policies: readonly string[];
  readonly disabled: boolean;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

export function userInfo(user: UserRecord): UserInfo {
  return {
    id: user.id,
    name: user.name,
    hasPassword: user.passwordHash !== null,
    policies: [...user.policies],
    disabled: user.disabled,
    createdAt: user.createdAt,
    updatedAt: user.updatedAt,
    revision: user.revision,
  };
}

/** A token without its hash. */
export type TokenInfo = Omit<TokenRecord, "hash">;

export function tokenInfo(token: TokenRecord): TokenInfo {
  const { hash: _hash, ...rest } = token;
  return rest;
}

/** A group with its members named. */
export interface GroupInfo extends Omit<GroupRecord, "members"> {
  readonly members: readonly string[];
}

export async function groupInfo(
  group: GroupRecord,
  namesOf: (ids: readonly string[]) => Promise<string[]>,
): Promise<GroupInfo> {
  return { ...group, members: await namesOf(group.members) };
}
