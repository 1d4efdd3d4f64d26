/** `custos key …`: create, inspect, rotate and change the state of KMS keys. */
import { type Command, Option } from "commander";
import { arg, type CliContext, seg } from "../context.js";
import { printable, usageError } from "../errors.js";
import { renderRecord, renderTable } from "../output.js";
import { parseDuration, parseInteger } from "../parse.js";

type Json = Record<string, unknown>;

/** The list view leaves out timestamps and ids; `key show` and `--json` have everything. */
const KEY_COLUMNS = [
  "name",
  "purpose",
  "algorithm",
  "state",
  "latestVersion",
  "minDecryptionVersion",
  "rotationPeriodSeconds",
  "destroyAt",
];

/**
 * A key as `key: value` lines and its versions as a table, each version's public key
 * (sign keys) after it as the PEM it is: in a table cell its newlines would be
 * control characters, shown as U+FFFD.
 */
export function renderKey(answer: unknown): string {
  const key = answer as Json;
  if (!Array.isArray(key.versions)) return renderRecord(key);
  const versions = key.versions as Json[];
  let out = renderRecord({ ...key, versions: versions.map(({ publicKeyPem: _pem, ...v }) => v) });
  for (const v of versions) {
    if (typeof v.publicKeyPem !== "string") continue;
    const pem = v.publicKeyPem.split("\n").map(printable).join("\n");
    out += `\nversion ${printable(String(v.version))} public key:\n${pem.endsWith("\n") ? pem : `${pem}\n`}`;
  }
  return out;
}

/** Registers `key` and its subcommands. */
export function registerKeyCommands(program: Command, ctx: CliContext): void {
  const key = program.command("key").description("manage KMS keys");
  const path = (name: string): string => `/v1/keys/${seg(name)}`;

  key
    .command("create <name>")
    .description("create a key (its first version is generated in the HSM)")
    .addOption(new Option("--purpose <purpose>", "what the key does").choices(["encrypt", "sign"]).default("encrypt"))
    .option("--algorithm <algorithm>", "aes-256-gcm, ecdsa-p256, ed25519, rsa-3072 (default: per purpose)")
    .option("--description <text>", "free text")
    .option("--rotation-period <duration>", "rotate automatically this often (e.g. 30d)", arg(parseDuration))
    .action(
      async (
        name: string,
        o: { purpose: string; algorithm?: string; description?: string; rotationPeriod?: number },
      ): Promise<void> => {
        const body: Json = { name, purpose: o.purpose };
        if (o.algorithm !== undefined) body.algorithm = o.algorithm;
        if (o.description !== undefined) body.description = o.description;
        if (o.rotationPeriod !== undefined) body.rotationPeriodSeconds = o.rotationPeriod;
        await ctx.emit(await ctx.client().request("POST", "/v1/keys", { body }), renderKey);
      },
    );

  key
    .command("list")
    .description("list keys")
    .option("--prefix <prefix>", "only names starting with this")
    .option("--after <name>", "only names after this one (paging)")
    .option(
      "--limit <n>",
      "at most this many",
      arg((t) => parseInteger(t, "limit")),
    )
    .action(async (o: { prefix?: string; after?: string; limit?: number }): Promise<void> => {
      const answer = await ctx.client().request<{ keys: Json[] }>("GET", "/v1/keys", {
        query: { prefix: o.prefix, after: o.after, limit: o.limit },
      });
      await ctx.emit(answer, (a) => renderTable(a.keys, { columns: KEY_COLUMNS }));
    });

  key
    .command("show <name>")
    .description("show a key's metadata and versions (never its material)")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("GET", path(name)), renderKey);
    });

  key
    .command("rotate <name>")
    .description("add a new version and make it the one that encrypts and signs")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("POST", `${path(name)}/rotate`), renderKey);
    });

  key
    .command("update <name>")
    .description("change a key's description, rotation period or minimum decryption version")
    .option("--description <text>", "new description")
    .option("--rotation-period <duration>", "rotate automatically this often", arg(parseDuration))
    .option("--no-rotation", "stop automatic rotation")
    .option(
      "--min-decryption-version <n>",
      "refuse to decrypt with older versions",
      arg((t) => parseInteger(t, "version")),
    )
    .action(
      async (
        name: string,
        o: { description?: string; rotationPeriod?: number; rotation: boolean; minDecryptionVersion?: number },
      ): Promise<void> => {
        const body: Json = {};
        if (o.rotationPeriod !== undefined && !o.rotation) {
          throw usageError("--rotation-period and --no-rotation contradict each other");
        }
        if (o.description !== undefined) body.description = o.description;
        if (o.rotationPeriod !== undefined) body.rotationPeriodSeconds = o.rotationPeriod;
        if (!o.rotation) body.rotationPeriodSeconds = null;
        if (o.minDecryptionVersion !== undefined) body.minDecryptionVersion = o.minDecryptionVersion;
        if (Object.keys(body).length === 0) {
          throw usageError(
            "nothing to update: give --description, --rotation-period, --no-rotation or --min-decryption-version",
          );
        }
        await ctx.emit(await ctx.client().request("PATCH", path(name), { body }), renderKey);
      },
    );

  for (const [verb, enabled] of [
    ["disable", false],
    ["enable", true],
  ] as const) {
    key
      .command(`${verb} <name>`)
      .description(enabled ? "allow the key to be used again" : "refuse every use of the key until enabled")
      .action(async (name: string): Promise<void> => {
        await ctx.emit(await ctx.client().request("PATCH", path(name), { body: { enabled } }), renderKey);
      });
  }

  key
    .command("destroy <name>")
    .description("schedule the key's destruction (or destroy it now with --now)")
    .option("--waiting <duration>", "waiting period before destruction (default: the server's)", arg(parseDuration))
    .option("--now", "destroy immediately; ciphertexts under the key become undecryptable")
    .action(async (name: string, o: { waiting?: number; now?: boolean }): Promise<void> => {
      if (o.now === true && o.waiting !== undefined) throw usageError("--waiting and --now contradict each other");
      const query = o.now === true ? { immediate: true } : { waitingSeconds: o.waiting };
      await ctx.emit(await ctx.client().request("DELETE", path(name), { query }), renderKey);
    });

  key
    .command("cancel-destruction <name>")
    .description("cancel a scheduled destruction (the key comes back disabled or enabled as the server decides)")
    .action(async (name: string): Promise<void> => {
      await ctx.emit(await ctx.client().request("POST", `${path(name)}/cancel-destruction`), renderKey);
    });
}
