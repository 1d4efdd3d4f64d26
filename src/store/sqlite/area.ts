import type { AuditEntry } from "../types.js";

/**
 * What a per-area SQL module (pki, platform, secrets, broker) gets from the store:
 * prepared-statement helpers, and reads and writes run the store's way. A write's
 * function runs inside one group-committed transaction; `audit` appends an entry
 * to the hash chain inside it, so a change and its record commit together.
 */
export interface Sql {
  get<R>(sql: string, ...params: unknown[]): R | undefined;
  all<R>(sql: string, ...params: unknown[]): R[];
  run(sql: string, ...params: unknown[]): { changes: number };
}

export interface Area {
  read<T>(fn: (sql: Sql) => T): Promise<T>;
  write<T>(fn: (sql: Sql, audit: (entry: AuditEntry) => void) => T): Promise<T>;
}
