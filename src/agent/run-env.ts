/**
 * Which environment variables `custos run` gives the app: the files it wrote and
 * its SPIFFE id under fixed `CUSTOS_*` names, and its secrets — each under its
 * name upper-cased with every other character turned into `_` (`db/password` →
 * `DB_PASSWORD`, `shared/ca-bundle` → `SHARED_CA_BUNDLE`; a leading digit gets a
 * `_` in front), or under the name `--env NAME=<secret>` gives it. A default name
 * never replaces a variable `custos run` inherited (PATH, HOME, a platform's
 * settings) nor takes one that makes a program load code (LD_*, DYLD_*, NODE_OPTIONS,
 * PYTHONPATH, JAVA_TOOL_OPTIONS, BASH_ENV and the like): a secret's writer, possibly
 * another app's owner sharing it, would otherwise choose what the app runs or loads.
 * Replacing one takes an explicit `--env`.
 */

/** The variables `custos run` always sets; no secret may take one of these names. */
export const RESERVED_VARIABLES = [
  "CUSTOS_CERT_FILE",
  "CUSTOS_KEY_FILE",
  "CUSTOS_CA_FILE",
  "CUSTOS_JWT_FILE",
  "CUSTOS_SPIFFE_ID",
  "CUSTOS_BOOTSTRAP_TOKEN",
] as const;

const VARIABLE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Variables that make a process load code its writer chooses before the app's own: the
 * dynamic loader's (glibc's, macOS's) and those of the runtimes and shells an app is
 * commonly written for.
 */
const LOADER_VARIABLE =
  /^(?:(?:LD|DYLD)_.*|NODE_OPTIONS|NODE_PATH|PYTHONPATH|PYTHONHOME|PYTHONSTARTUP|PERL5OPT|PERL5LIB|PERLLIB|RUBYOPT|RUBYLIB|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|JDK_JAVA_OPTIONS|BASH_ENV|ENV|GCONV_PATH)$/;

/** One `--env NAME=<secret>`. */
export interface EnvMapping {
  readonly variable: string;
  /** The secret's name (`db/password`, `shared/ca-bundle`) or whole path. */
  readonly secret: string;
}

/** How secrets reach the environment. */
export interface EnvPolicy {
  /** Every secret not mapped explicitly goes in under its default name (off with `--no-env`). */
  readonly automatic: boolean;
  readonly mappings: readonly EnvMapping[];
}

/** A secret as the environment sees it. */
export interface NamedValue {
  readonly path: string;
  readonly name: string;
  readonly value: string;
}

/** The default variable for a secret name: `db/password` → `DB_PASSWORD`. */
export function variableFor(name: string): string {
  const upper = name.toUpperCase().replace(/[^A-Z0-9]/g, "_");
  return /^[0-9]/.test(upper) ? `_${upper}` : upper;
}

/** Parses `NAME=<secret>`. @throws Error naming what is wrong. */
export function parseEnvMapping(text: string): EnvMapping {
  const at = text.indexOf("=");
  const variable = at < 0 ? "" : text.slice(0, at);
  const secret = at < 0 ? "" : text.slice(at + 1);
  if (!VARIABLE.test(variable)) {
    throw new Error(`invalid --env "${text}": expected NAME=<secret name>, NAME being letters, digits and _`);
  }
  if (secret === "") throw new Error(`invalid --env "${text}": the secret name is empty`);
  if ((RESERVED_VARIABLES as readonly string[]).includes(variable)) {
    throw new Error(`invalid --env "${text}": ${variable} is set by custos run itself`);
  }
  return { variable, secret };
}

export interface SecretVariables {
  readonly variables: Record<string, string>;
  readonly conflicts: string[];
  readonly missing: string[];
  readonly unusable: string[];
}

/** Finds a secret by name or by whole path. */
export function findSecret<T extends { readonly path: string; readonly name: string }>(
  secrets: readonly T[],
  nameOrPath: string,
): T | undefined {
  return secrets.find((s) => s.name === nameOrPath) ?? secrets.find((s) => s.path === nameOrPath);
}

/**
 * The secret variables for `secrets` under `policy`, and what kept some out:
 * `conflicts` of names (two secrets, or a secret and a variable custos run sets,
 * inherits or the loader reads, wanting one name), `missing` secrets (a mapping
 * naming one the instance doesn't have), and `unusable` values, which no
 * environment can hold (a NUL byte: exec passes variables as C strings, and spawn
 * refuses them with an error that quotes the value). All name secrets and
 * variables, never values.
 */
export function secretVariables(
  secrets: readonly NamedValue[],
  policy: EnvPolicy,
  /** The variables `custos run` passes on from its own environment. */
  inherited: ReadonlySet<string>,
): SecretVariables {
  const variables: Record<string, string> = {};
  const owner = new Map<string, string>();
  const conflicts: string[] = [];
  const missing: string[] = [];
  const unusable: string[] = [];
  const explicit = new Set<string>();
  const claim = (variable: string, secret: NamedValue): void => {
    const other = owner.get(variable);
    if (other !== undefined) {
      conflicts.push(`secrets ${other} and ${secret.name} both go into ${variable}: map one with --env NAME=<secret>`);
      delete variables[variable];
      return;
    }
    owner.set(variable, secret.name);
    if (secret.value.includes("\0")) {
      unusable.push(`secret ${secret.name} can't go into ${variable}: its value holds a NUL byte`);
      return;
    }
    variables[variable] = secret.value;
  };
  for (const mapping of policy.mappings) {
    const secret = findSecret(secrets, mapping.secret);
    if (secret === undefined) {
      missing.push(`--env ${mapping.variable}: secret "${mapping.secret}" is not one this instance receives`);
      continue;
    }
    explicit.add(secret.path);
    claim(mapping.variable, secret);
  }
  if (policy.automatic) {
    for (const secret of [...secrets].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (explicit.has(secret.path)) continue;
      const variable = variableFor(secret.name);
      if ((RESERVED_VARIABLES as readonly string[]).includes(variable)) {
        conflicts.push(
          `secret ${secret.name} would go into ${variable}, which custos run sets itself: map it with --env`,
        );
        continue;
      }
      if (inherited.has(variable) || LOADER_VARIABLE.test(variable)) {
        const why = inherited.has(variable) ? "inherited by custos run" : "which makes a program load code";
        conflicts.push(
          `secret ${secret.name} would replace ${variable}, ${why}: to do that on purpose, map it with --env ${variable}=${secret.name}`,
        );
        continue;
      }
      claim(variable, secret);
    }
  }
  return { variables, conflicts, missing, unusable };
}
