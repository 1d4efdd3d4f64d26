/**
 * Human output: `key: value` lines for one record and aligned tables for lists.
 * Shapes come from the server, so rendering is generic over JSON values rather
 * than tied to each answer's fields. Every value passes through `printable`.
 */
import { printable } from "./errors.js";

type Json = Record<string, unknown>;

function isPlainObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isTableOfObjects(v: unknown): v is Json[] {
  return Array.isArray(v) && v.length > 0 && v.every(isPlainObject);
}

/** One value as table cell or `key: value` text: `-` for null, lists comma-joined, objects as JSON. */
export function formatValue(value: unknown): string {
  if (value === null || value === undefined) return "-";
  if (typeof value === "string") return printable(value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return "-";
    if (value.every((v) => !isPlainObject(v) && !Array.isArray(v))) return value.map(formatValue).join(", ");
  }
  return printable(JSON.stringify(value));
}

/**
 * A record as aligned `key: value` lines. Nested objects are flattened to dotted
 * keys (`hsm.status`); arrays of objects (a key's versions) follow as tables.
 */
export function renderRecord(record: Json): string {
  const lines: [string, string][] = [];
  const tables: [string, Json[]][] = [];
  const walk = (obj: Json, prefix: string): void => {
    for (const [key, value] of Object.entries(obj)) {
      const name = prefix + key;
      if (isTableOfObjects(value)) tables.push([name, value]);
      else if (isPlainObject(value) && Object.keys(value).length > 0) walk(value, `${name}.`);
      else lines.push([name, formatValue(value)]);
    }
  };
  walk(record, "");
  const width = Math.max(0, ...lines.map(([k]) => k.length + 1));
  let out = lines.map(([k, v]) => `${`${printable(k)}:`.padEnd(width)} ${v}`.trimEnd()).join("\n");
  if (lines.length > 0) out += "\n";
  for (const [name, rows] of tables) {
    out += `\n${printable(name)}:\n`;
    out += renderTable(rows)
      .split("\n")
      .map((line) => (line === "" ? line : `  ${line}`))
      .join("\n");
  }
  return out;
}

export interface TableOptions {
  /** Columns to show, in order, when present in the rows; others are left out. */
  columns?: readonly string[];
  /** Columns never to show (bulky or internal fields). */
  omit?: readonly string[];
}

/**
 * Rows as an aligned table with a header of field names. Without `columns`, the
 * columns are every field seen in the rows, in first-seen order.
 */
export function renderTable(rows: readonly Json[], options: TableOptions = {}): string {
  if (rows.length === 0) return "";
  const seen: string[] = [];
  for (const row of rows) for (const key of Object.keys(row)) if (!seen.includes(key)) seen.push(key);
  const wanted = options.columns?.filter((c) => seen.includes(c));
  const columns = (wanted !== undefined && wanted.length > 0 ? wanted : seen).filter(
    (c) => !(options.omit ?? []).includes(c),
  );
  const cells = rows.map((row) => columns.map((c) => formatValue(row[c])));
  const header = columns.map(printable);
  const widths = columns.map((_, i) => Math.max(header[i]?.length ?? 0, ...cells.map((r) => r[i]?.length ?? 0)));
  const line = (values: readonly string[]): string =>
    values
      .map((v, i) => v.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd();
  return `${[line(header), ...cells.map(line)].join("\n")}\n`;
}
