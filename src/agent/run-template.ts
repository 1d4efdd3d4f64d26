/**
 * The template syntax of `custos run --template`: text with placeholders in double
 * braces, nothing more (no conditions, loops or filters, so a template can't
 * surprise anyone):
 *
 *   {{ secret "db/password" }}   a secret's value, by its name (`db/password`,
 *                                `shared/ca-bundle`) or its whole path
 *   {{ spiffe_id }}              the instance's SPIFFE id
 *   {{ instance }}               the instance id
 *   {{ jwt }}                    the current JWT
 *   {{ "{{" }}                   a literal string (the way to write `{{`)
 *
 * Spaces inside the braces are optional. Anything else between `{{` and `}}`, or a
 * `{{` that never closes, is an error when the template is loaded, naming the file,
 * line and column: a typo must stop the app from starting, not render as a blank.
 */

/** What a placeholder stands for. */
export type Placeholder =
  | { readonly kind: "secret"; readonly name: string }
  | { readonly kind: "spiffe_id" | "instance" | "jwt" }
  | { readonly kind: "literal"; readonly text: string };

/** Where a placeholder sits in its file (1-based), for error messages. */
export interface Position {
  readonly line: number;
  readonly column: number;
}

/** A parsed template: literal text and placeholders, in order. */
export interface Template {
  /** The file it came from (for messages). */
  readonly source: string;
  readonly parts: readonly (string | (Placeholder & { readonly at: Position }))[];
}

/** What a template is rendered with. */
export interface TemplateValues {
  readonly spiffeId: string;
  readonly instance: string;
  readonly jwt: string;
  /** The value of a secret by name or whole path, or undefined when the instance has no such secret. */
  readonly secret: (name: string) => string | undefined;
}

/** A template that can't be parsed or rendered. */
export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TemplateError";
  }
}

const PLACEHOLDER = /^\s*(?:(spiffe_id|instance|jwt)|secret\s+"([^"\\]*)"|"([^"\\]*)")\s*$/;
const SECRET_NAME = /^[A-Za-z0-9._-]{1,64}(?:\/[A-Za-z0-9._-]{1,64}){0,10}$/;

/** Parses `text` (the contents of `source`). @throws TemplateError naming the first problem. */
export function parseTemplate(text: string, source: string): Template {
  const parts: Template["parts"][number][] = [];
  let from = 0;
  for (;;) {
    const open = text.indexOf("{{", from);
    if (open < 0) break;
    const at = positionOf(text, open);
    const close = text.indexOf("}}", open + 2);
    if (close < 0) throw new TemplateError(`${source}:${at.line}:${at.column}: "{{" is never closed by "}}"`);
    const inside = text.slice(open + 2, close);
    const match = PLACEHOLDER.exec(inside);
    if (match === null || inside.includes("\n")) {
      // Quote at most a little of it: a template may hold secrets by mistake.
      const shown = inside.trim().slice(0, 40);
      throw new TemplateError(
        `${source}:${at.line}:${at.column}: unknown placeholder {{ ${shown} }} ` +
          `(known: secret "<name>", spiffe_id, instance, jwt, "<text>")`,
      );
    }
    if (open > from) parts.push(text.slice(from, open));
    const [, word, secretName, literal] = match;
    if (secretName !== undefined) {
      if (!isSecretName(secretName)) {
        throw new TemplateError(`${source}:${at.line}:${at.column}: "${secretName}" is not a secret name`);
      }
      parts.push({ kind: "secret", name: secretName, at });
    } else if (literal !== undefined) {
      parts.push({ kind: "literal", text: literal, at });
    } else {
      parts.push({ kind: word as "spiffe_id" | "instance" | "jwt", at });
    }
    from = close + 2;
  }
  if (from < text.length) parts.push(text.slice(from));
  return { source, parts };
}

/** The secret names a template uses. */
export function secretsUsed(template: Template): string[] {
  return template.parts.flatMap((p) => (typeof p !== "string" && p.kind === "secret" ? [p.name] : []));
}

/** True when the template has a `{{ jwt }}` (it must be rewritten whenever the JWT is refreshed). */
export function usesJwt(template: Template): boolean {
  return template.parts.some((p) => typeof p !== "string" && p.kind === "jwt");
}

/** Renders a template. @throws TemplateError when it names a secret the instance doesn't have. */
export function renderTemplate(template: Template, values: TemplateValues): string {
  let out = "";
  for (const part of template.parts) {
    if (typeof part === "string") {
      out += part;
      continue;
    }
    switch (part.kind) {
      case "secret": {
        const value = values.secret(part.name);
        if (value === undefined) {
          throw new TemplateError(
            `${template.source}:${part.at.line}:${part.at.column}: secret "${part.name}" is not one this instance receives`,
          );
        }
        out += value;
        break;
      }
      case "spiffe_id":
        out += values.spiffeId;
        break;
      case "instance":
        out += values.instance;
        break;
      case "jwt":
        out += values.jwt;
        break;
      case "literal":
        out += part.text;
        break;
    }
  }
  return out;
}

/** A secret's name (`db/password`, `shared/ca-bundle`) or whole path: segments of [A-Za-z0-9._-], not `.` or `..`. */
export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name) && name.split("/").every((s) => s !== "." && s !== "..");
}

function positionOf(text: string, index: number): Position {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf("\n"); i >= 0 && i < index; i = text.indexOf("\n", i + 1)) {
    line += 1;
    lineStart = i + 1;
  }
  return { line, column: index - lineStart + 1 };
}
