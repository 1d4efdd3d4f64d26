import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  createReadStream,
  createWriteStream,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { after, before, describe, test } from "node:test";
import { EXIT_CLIENT, EXIT_OK, EXIT_SERVER, EXIT_USAGE } from "../../src/cli/errors.js";
import { loadConfig } from "../../src/config/index.js";
import { Envelope, httpKmsFromEnv } from "../../src/envelope/index.js";
import { type ErrorCode, httpStatusOf } from "../../src/errors/index.js";
import { runCli } from "../cli/harness.js";
import { type CustosInstance, startCustos } from "../helpers/custos.js";
import { freePort } from "../helpers/ports.js";

/**
 * What README.md and docs/*.md tell a reader, checked against the real `custos`
 * binary and server. The claims are read from the documents themselves, so a
 * document and the code can't drift apart without a test noticing.
 */

const ROOT = resolve(import.meta.dirname, "../..");
const BIN = join(ROOT, "bin/custos.js");
const read = (file: string): string => readFileSync(join(ROOT, file), "utf8");
const ROUTE_DOCS = ["docs/api.md", "docs/broker.md", "docs/pki.md", "docs/ssh-ca.md"] as const;
const ALL_DOCS = ["README.md", ...ROUTE_DOCS, "docs/ciphertext-format.md", "docs/envelope-format.md"] as const;

type Json = Record<string, unknown>;
type OpenApi = { paths: Record<string, Record<string, Json>> };

interface DocRoute {
  /** `METHOD /v1/path/{param}`, as the OpenAPI document spells it. */
  readonly key: string;
  /** `docs/x.md:line` */
  readonly where: string;
  readonly row: string;
}

/** A markdown table row's cells; `\|` inside a cell is a literal bar, read as "/". */
const cellsOf = (row: string): string[] =>
  row
    .replace(/\\\|/g, "/")
    .trim()
    .replace(/^\||\|$/g, "")
    .split("|")
    .map((c) => c.trim());

const ROUTE = /`(?:((?:GET|POST|PUT|PATCH|DELETE)(?:\/(?:GET|POST|PUT|PATCH|DELETE))*) )?(\/v1\/[^`\s?[]*)[^`]*`/g;
const openApiPath = (path: string): string =>
  path.replace(/:(prefix|shared-path)$/, "{path}").replace(/:([a-z]+)/g, "{$1}");

/** `METHOD path` keys of the backticked routes in `text` (a bare path takes the method before it). */
function routesIn(text: string): string[] {
  const keys: string[] = [];
  let methods: string[] = [];
  for (const m of text.matchAll(ROUTE)) {
    if (m[1]) methods = m[1].split("/");
    for (const method of methods) keys.push(`${method} ${openApiPath(m[2] ?? "")}`);
  }
  return keys;
}

/** Every route named in the first column of a table in the route documents. */
function documentedRoutes(): DocRoute[] {
  const out: DocRoute[] = [];
  for (const file of ROUTE_DOCS) {
    read(file)
      .split("\n")
      .forEach((row, i) => {
        if (!row.startsWith("|")) return;
        for (const key of routesIn(cellsOf(row)[0] ?? "")) out.push({ key, where: `${file}:${i + 1}`, row });
      });
  }
  return out;
}

/** The routes the documents say need no bearer token, and the instances' routes (their own credentials). */
/** The text of `file` from `from` up to `to`. */
function section(file: string, from: RegExp, to: RegExp): string {
  const text = read(file);
  const start = text.search(from);
  assert.ok(start >= 0, `${file}: ${from} not found`);
  const rest = text.slice(start);
  const end = rest.slice(1).search(to);
  return end < 0 ? rest : rest.slice(0, end + 1);
}

/** api.md's sentence on the routes that need no bearer token. */
const apiPublicSentence = () => /Every route\s+except ([\s\S]*?) needs/.exec(read("docs/api.md"))?.[1] ?? "";

/** The public routes of the PKI and SSH CA documents, by document. */
const publicSections = () => ({
  "docs/pki.md": routesIn(section("docs/pki.md", /## Public endpoints/, /\n## /)),
  "docs/ssh-ca.md": routesIn(section("docs/ssh-ca.md", /\nUnauthenticated:/, /\nAuthenticated:/)),
});

function documentedWithoutBearer(): { publicRoutes: Set<string>; instanceRoutes: Set<string> } {
  const publicRoutes = new Set<string>([...routesIn(apiPublicSentence()), ...Object.values(publicSections()).flat()]);
  const instanceRoutes = new Set<string>();
  for (const { key, row } of documentedRoutes().filter((r) => r.where.startsWith("docs/broker.md"))) {
    const auth = cellsOf(row)[1] ?? "";
    if (auth === "none") publicRoutes.add(key);
    else if (/bootstrap token|mTLS|JWT/.test(auth)) instanceRoutes.add(key);
  }
  return { publicRoutes, instanceRoutes };
}

/** Top-level field names of a `{ "a", "b"?, c? }` spec, each with whether it is optional. */
function topFields(spec: string): Map<string, boolean> {
  let s = spec.trim().slice(1, -1);
  for (let before = ""; before !== s; ) {
    before = s;
    s = s.replace(/\{[^{}]*\}|\[[^[\]]*\]|\([^()]*\)/g, "");
  }
  const out = new Map<string, boolean>();
  for (const piece of s.split(",")) {
    // `user | group` (in a table cell `user \| group`, read as `user / group`): one or the other.
    const either = piece.split(/\s*\|\s*|\s+\/\s+/);
    for (const name of either) {
      const m = /^\s*"?([A-Za-z]+)"?\s*(\?)?/.exec(name);
      if (m?.[1]) out.set(m[1], either.length > 1 || m[2] === "?");
    }
  }
  return out;
}

/** The request body a documented row shows: its alternatives merged (a field is required only if every one requires it). */
function documentedBody(file: string, row: string): Map<string, boolean> | null {
  const cells = cellsOf(row);
  let specs: string[] = [];
  if (file === "docs/api.md") {
    // Only the tables with a body column (method and path | body | answer).
    if (cells.length >= 3 && cells[1]?.startsWith("`{"))
      specs = [...(cells[1] ?? "").matchAll(/`(\{[^`]*\})`/g)].map((m) => m[1] ?? "");
  } else {
    const inline = /^`[A-Z]+ [^`]+`\s*`(\{[^`]*\})`/.exec(cells[0] ?? "");
    const rest = row.replace(/\\\|/g, "/").split("|").slice(2).join("|");
    const arrow = /`(\{[^`]*\})`\s*→/.exec(rest);
    const spec = inline?.[1] ?? arrow?.[1];
    if (spec) specs = [spec];
  }
  if (specs.length === 0) return null;
  const forms = specs.map(topFields);
  const merged = new Map<string, boolean>();
  for (const form of forms) {
    for (const name of form.keys()) merged.set(name, !forms.every((f) => f.get(name) === false));
  }
  return merged;
}

function openApiBody(doc: OpenApi, key: string): Map<string, boolean> | undefined {
  const [method, path] = key.split(" ") as [string, string];
  const op = doc.paths[path]?.[method.toLowerCase()];
  if (!op) return undefined;
  const schema = ((op.requestBody as Json | undefined)?.content as Json | undefined)?.["application/json"] as
    | { schema?: { properties?: Json; required?: string[] } }
    | undefined;
  const required = new Set(schema?.schema?.required ?? []);
  return new Map(Object.keys(schema?.schema?.properties ?? {}).map((name) => [name, !required.has(name)]));
}

/** Help text of `custos <words> --help`, in process. */
async function helpOf(words: readonly string[]): Promise<string> {
  const r = await runCli([...words, "--help"], {});
  assert.equal(r.code, EXIT_OK, `custos ${words.join(" ")} --help: ${r.err}`);
  return r.out;
}

const subcommandsIn = (help: string): string[] => {
  const list = /\nCommands:\n([\s\S]*?)(\n\n|$)/.exec(help)?.[1] ?? "";
  return [...list.matchAll(/^ {2}([a-z][a-z-]*)/gm)].map((m) => m[1] ?? "").filter((c) => c !== "help");
};

/** Every `custos …` command line of the README (code spans and blocks) and of the docs' code blocks. */
function documentedCommandLines(): { where: string; line: string }[] {
  const out: { where: string; line: string }[] = [];
  const readme = read("README.md");
  for (const m of readme.matchAll(/`(?:npx )?custos ([^`]+)`/g)) {
    const line = readme.slice(0, m.index).split("\n").length;
    out.push({ where: `README.md:${line}`, line: (m[1] ?? "").replace(/\s+/g, " ") });
  }
  for (const file of ALL_DOCS) {
    const lines = read(file).split("\n");
    let fenced = false;
    for (let i = 0; i < lines.length; i++) {
      const text = lines[i] ?? "";
      if (text.startsWith("```")) fenced = !fenced;
      const m = fenced ? /^(?:npx )?custos (.*)$/.exec(text) : null;
      if (!m) continue;
      // A command continues over `\` line ends and over the indented lines that describe it.
      const start = i + 1;
      let line = m[1] ?? "";
      while (/^\s+\S/.test(lines[i + 1] ?? "") || line.endsWith("\\"))
        line = `${line.replace(/\\$/, "")} ${lines[++i]}`;
      out.push({ where: `${file}:${start}`, line: line.replace(/\s+/g, " ") });
    }
  }
  return out;
}

describe("README.md and docs/*.md against the real custos", () => {
  let custos: CustosInstance;
  let openapi: OpenApi;
  before(async () => {
    custos = await startCustos();
    const docs = await custos.call("GET", "/v1/docs", undefined, null);
    assert.equal(docs.status, 200, docs.text);
    openapi = docs.body as OpenApi;
  });
  after(async () => {
    await custos?.dispose();
  });

  const openApiKeys = (): string[] =>
    Object.entries(openapi.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`));

  test("the README's first commands run as written from a checkout whose var/ init made; a second init keeps the token and CA", async () => {
    const readme = read("README.md");
    const block = /and then, for example:\n+```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? "";
    const [exported, ...commands] = block.trim().split("\n");
    assert.match(exported ?? "", /^export /);
    // Only what the README exports, and the address of this server instead of the default port.
    const { CUSTOS_TOKEN: _none, ...inherited } = custos.env;
    const env: NodeJS.ProcessEnv = { ...inherited, CUSTOS_ADDR: custos.url };
    for (const [, name, value] of (exported ?? "").matchAll(/(CUSTOS_[A-Z_]+)=(\S+)/g)) if (name) env[name] = value;
    assert.equal(JSON.parse(read("package.json")).bin.custos, "bin/custos.js", "npx custos runs bin/custos.js");

    const checkout = mkdtempSync(join(tmpdir(), "custos-readme-"));
    try {
      symlinkSync(custos.dir, join(checkout, "var"));
      assert.equal(statSync(join(checkout, "var/admin.token")).mode & 0o777, 0o600, "var/admin.token is 0600");
      const root = await custos.call("GET", "/v1/pki/ca.pem", undefined, null);
      assert.equal(readFileSync(join(checkout, "var/tls/ca.pem"), "utf8"), root.text, "var/tls/ca.pem is the root");
      assert.ok(commands.length >= 3);
      const outputs = commands.map((command) => {
        const args = command.replace(/^npx custos /, "").split(/\s+/);
        const r = spawnSync(process.execPath, [BIN, ...args], { cwd: checkout, env, timeout: 120_000 });
        assert.equal(r.status, EXIT_OK, `${command}: ${r.stderr}`);
        return r.stdout.toString("utf8");
      });
      const datakey = JSON.parse(outputs[commands.findIndex((c) => c.includes("datakey"))] ?? "") as Json;
      assert.equal(Buffer.from(String(datakey.plaintext), "base64").length, 32);
      assert.match(String(datakey.ciphertext), /^custos:v1:/);
      assert.match(outputs.at(-1) ?? "", /^ok: /m, "audit verify reports ok");

      // README: running `make run` again (its `custos init`) reuses the token, the store and the certificates.
      const token = readFileSync(join(custos.dir, "admin.token"), "utf8");
      await custos.stop();
      const again = spawnSync(process.execPath, [BIN, "init"], { env: custos.env, timeout: 120_000 });
      assert.equal(again.status, EXIT_OK, again.stderr.toString());
      await custos.start();
      assert.equal(readFileSync(join(custos.dir, "admin.token"), "utf8"), token);
      assert.equal(readFileSync(join(checkout, "var/tls/ca.pem"), "utf8"), root.text);
      assert.equal((await custos.call("GET", "/v1/keys/app-a-data")).status, 200, "the store was kept");
    } finally {
      rmSync(checkout, { recursive: true, force: true });
    }
  });

  test("the README's envelope example runs as written, and the CLI decrypts what it streamed", async () => {
    assert.equal((await custos.call("POST", "/v1/keys", { name: "storage", purpose: "encrypt" })).status, 201);
    const dir = mkdtempSync(join(tmpdir(), "custos-readme-envelope-"));
    const { kms, close } = httpKmsFromEnv({
      CUSTOS_ADDR: custos.url,
      CUSTOS_TOKEN_FILE: join(custos.dir, "admin.token"),
      CUSTOS_CACERT: join(custos.dir, "tls/ca.pem"),
    });
    try {
      const envelope = new Envelope({ kms });
      const data = randomBytes(300_000);
      const blob = await envelope.encrypt(data, { key: "storage", context: { bucket: "b", object: "o" } });
      const back = await envelope.decrypt(blob, { context: { bucket: "b", object: "o" } });
      assert.deepEqual(back, data);

      const [src, dst] = [join(dir, "src"), join(dir, "dst")];
      writeFileSync(src, data);
      await pipeline(createReadStream(src), envelope.encryptStream({ key: "storage" }), createWriteStream(dst));
      const cli = custos.cli(["file", "decrypt", "--in", dst]);
      assert.equal(cli.status, EXIT_OK, cli.stderr);
      assert.deepEqual(cli.stdoutBytes, data);
    } finally {
      close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("every route in the docs' tables is served, and every OpenAPI operation is in a table", async () => {
    const documented = documentedRoutes();
    const keys = new Set(documented.map((r) => r.key));
    assert.ok(keys.size > 90, `only ${keys.size} routes read from the docs`);
    assert.deepEqual(
      openApiKeys().filter((k) => !keys.has(k)),
      [],
      "in /v1/docs but in no table of docs/*.md",
    );
    const inOpenApi = new Set(openApiKeys());
    for (const { key, where } of documented.filter((r) => !inOpenApi.has(r.key))) {
      const [method, path] = key.split(" ") as [string, string];
      const concrete = path.replace("{id}", "int-1").replace("{request}", "MAA=");
      const r = await custos.call(method, concrete, method === "POST" ? {} : undefined, null);
      assert.notEqual(r.status, 404, `${where}: ${key} is not served: ${r.text}`);
    }
  });

  test("the OpenAPI document lists every documented route and marks the public ones as needing no token", () => {
    const inOpenApi = new Set(openApiKeys());
    const missing = documentedRoutes().filter((r) => !inOpenApi.has(r.key));
    assert.deepEqual(
      missing.map((r) => `${r.where} ${r.key}`),
      [],
      "documented routes missing from /v1/docs",
    );
    const { publicRoutes } = documentedWithoutBearer();
    const brokerRows = documentedRoutes().filter((r) => r.where.startsWith("docs/broker.md"));
    for (const { key } of brokerRows.filter((r) => /mTLS|JWT/.test(cellsOf(r.row)[1] ?? ""))) {
      const [method, path] = key.split(" ") as [string, string];
      const security = openapi.paths[path]?.[method.toLowerCase()]?.security as Json[] | undefined;
      assert.deepEqual(security, [{ instanceJwt: [] }], `${key} takes an instance's credential`);
    }
    for (const key of publicRoutes) {
      const [method, path] = key.split(" ") as [string, string];
      const op = openapi.paths[path]?.[method.toLowerCase()];
      if (!op) continue;
      const security = op.security as unknown[] | undefined;
      assert.ok(
        security !== undefined && (security.length === 0 || security.some((s) => Object.keys(s as Json).length === 0)),
        `${key} is documented as public but /v1/docs requires a bearer token`,
      );
    }
  });

  test("every parameter in an OpenAPI path template is defined as a path parameter", () => {
    const undefinedParameters: string[] = [];
    for (const [path, ops] of Object.entries(openapi.paths)) {
      const names = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
      for (const [method, op] of Object.entries(ops)) {
        const parameters = ((op as Json).parameters ?? []) as Array<{ in: string; name: string }>;
        for (const name of names) {
          if (!parameters.some((p) => p.in === "path" && p.name === name))
            undefinedParameters.push(`${method} ${path}`);
        }
      }
    }
    assert.deepEqual(undefinedParameters, []);
  });

  test("the OpenAPI document says 201 where a route creates", () => {
    for (const { key, where, row } of documentedRoutes().filter((r) => /\(201\)/.test(r.row))) {
      const [method, path] = key.split(" ") as [string, string];
      const responses = (openapi.paths[path]?.[method.toLowerCase()]?.responses ?? {}) as Json;
      assert.ok(
        "201" in responses,
        `${where}: ${key} answers 201 (${row.trim()}), /v1/docs says ${Object.keys(responses)}`,
      );
    }
  });

  test("request bodies in the docs' tables name the fields /v1/docs accepts, required as documented", () => {
    const differences: string[] = [];
    for (const { key, where, row } of documentedRoutes()) {
      const doc = documentedBody(where.split(":")[0] ?? "", row);
      const api = openApiBody(openapi, key);
      if (doc === null || api === undefined) continue;
      const show = (m: Map<string, boolean>) =>
        [...m]
          .map(([n, optional]) => `${n}${optional ? "?" : ""}`)
          .sort()
          .join(", ");
      if (show(doc) !== show(api))
        differences.push(`${where} ${key}: docs { ${show(doc)} }, /v1/docs { ${show(api)} }`);
    }
    assert.deepEqual(differences, []);
  });

  test("without a token, the routes the docs call public answer and every other route is 401 unauthenticated", async () => {
    const { publicRoutes, instanceRoutes } = documentedWithoutBearer();
    const fill = (path: string) =>
      path
        .replace("{path}", "acme/prod/web/db")
        .replace(/\{serial\}/, "01")
        .replace(/\{[a-z]+\}/g, "x");
    const wrong: string[] = [];
    for (const key of openApiKeys()) {
      if (instanceRoutes.has(key)) continue;
      const [method, path] = key.split(" ") as [string, string];
      const body = ["POST", "PUT", "PATCH"].includes(method) ? {} : undefined;
      const r = await custos.call(method, fill(path), body, null);
      const code = (r.body as { error?: { code?: string } } | null)?.error?.code;
      if (publicRoutes.has(key) ? r.status === 401 : r.status !== 401 || code !== "unauthenticated") {
        wrong.push(
          `${key}: ${r.status} ${code ?? ""} (${publicRoutes.has(key) ? "documented public" : "documented as needing a token"})`,
        );
      }
    }
    assert.deepEqual(wrong, []);
  });

  test("api.md's list of the routes that need no bearer token is complete", async () => {
    // The sentence names routes, or a document whose public routes it means.
    const sentence = apiPublicSentence();
    const byDocument = Object.entries(publicSections()).flatMap(([doc, routes]) =>
      sentence.includes(doc) ? routes : [],
    );
    const listed = new Set([...routesIn(sentence), ...byDocument]);
    const answeredWithoutToken: string[] = [];
    for (const key of documentedWithoutBearer().publicRoutes) {
      const [method, path] = key.split(" ") as [string, string];
      const r = await custos.call(
        method,
        path.replace("{id}", "int-1").replace("{request}", "MAA="),
        method === "POST" ? {} : undefined,
        null,
      );
      if (r.status !== 401 && !listed.has(key)) answeredWithoutToken.push(key);
    }
    assert.deepEqual(answeredWithoutToken, []);
  });

  test("answers carry the fields api.md's tables name", async () => {
    const api = read("docs/api.md");
    const rows = new Map(
      documentedRoutes()
        .filter((r) => r.where.startsWith("docs/api.md"))
        .map((r) => [r.key, r.row]),
    );
    const defined = (name: string) => new RegExp(`\`${name}\` = \`(\\{[^\`]*\\})\``).exec(api)?.[1] ?? "";
    /** The fields of the first answer shown in a row: a `{…}` of its own or a named type defined on the page. */
    const answerOf = (key: string): Map<string, boolean> => {
      const cell = cellsOf(rows.get(key) ?? "").at(-1) ?? "";
      const spec = /^`(\{[^`]*\})`/.exec(cell)?.[1] ?? defined(/^`([A-Z][a-z]+)`/.exec(cell)?.[1] ?? "");
      assert.ok(spec, `${key}: no answer read from docs/api.md`);
      return topFields(spec);
    };
    const hasFields = (
      key: string,
      answer: { status: number; body: unknown; text: string },
      fields = answerOf(key),
    ) => {
      assert.ok(answer.status < 300, `${key}: ${answer.text}`);
      const missing = [...fields.keys()].filter((f) => !(f in (answer.body as Json)));
      assert.deepEqual(missing, [], `${key} answered ${answer.text}`);
    };

    const password = "documented answers, checked";
    hasFields("POST /v1/users", await custos.call("POST", "/v1/users", { name: "reader", password }));
    hasFields(
      "POST /v1/auth/login",
      await custos.call("POST", "/v1/auth/login", { username: "reader", password }, null),
    );
    hasFields("GET /v1/auth/whoami", await custos.call("GET", "/v1/auth/whoami"));
    const made = await custos.call("POST", "/v1/auth/tokens", { name: "documented" });
    hasFields("POST /v1/auth/tokens", made);
    const listed = await custos.call("GET", "/v1/auth/tokens");
    hasFields("GET /v1/auth/tokens", listed);
    const tokenItem = topFields(/\[\s*(\{[^[\]]*\})\s*\]/.exec(rows.get("GET /v1/auth/tokens") ?? "")?.[1] ?? "{}");
    hasFields("GET /v1/auth/tokens", { ...listed, body: (listed.body as { tokens: Json[] }).tokens[0] }, tokenItem);
    hasFields("DELETE /v1/auth/tokens/{id}", await custos.call("DELETE", `/v1/auth/tokens/${(made.body as Json).id}`));
    hasFields(
      "POST /v1/groups",
      await custos.call("POST", "/v1/groups", { name: "readers" }),
      topFields(defined("Group")),
    );
    hasFields(
      "POST /v1/sudo/grants",
      await custos.call("POST", "/v1/sudo/grants", { user: "reader", ttlSeconds: 600, reason: "docs" }),
    );
    assert.equal((await custos.call("POST", "/v1/keys", { name: "answers", purpose: "encrypt" })).status, 201);
    assert.equal((await custos.call("POST", "/v1/keys", { name: "answers-sign", purpose: "sign" })).status, 201);
    hasFields(
      "POST /v1/keys/{name}/encrypt",
      await custos.call("POST", "/v1/keys/answers/encrypt", { plaintext: "aGk=" }),
    );
    hasFields(
      "POST /v1/keys/{name}/datakey",
      await custos.call("POST", "/v1/keys/answers/datakey", { plaintext: true }),
    );
    const signed = await custos.call("POST", "/v1/keys/answers-sign/sign", { message: "aGk=" });
    hasFields("POST /v1/keys/{name}/sign", signed);
    const { signature } = signed.body as { signature: string };
    hasFields(
      "POST /v1/keys/{name}/verify",
      await custos.call("POST", "/v1/keys/answers-sign/verify", { message: "aGk=", signature }),
    );
    hasFields("POST /v1/random", await custos.call("POST", "/v1/random", { bytes: 8 }));
    hasFields("POST /v1/audit/verify", await custos.call("POST", "/v1/audit/verify"));
  });

  test("GET /v1/health answers the fields api.md names", async () => {
    const health = await custos.call("GET", "/v1/health", undefined, null);
    assert.equal(health.status, 200, health.text);
    const documented = topFields(
      /`GET \/v1\/health` \| `(\{[^`]*\})`/.exec(read("docs/api.md").replace(/\\\|/g, "/"))?.[1] ?? "{}",
    );
    assert.deepEqual(Object.keys(health.body as Json).sort(), [...documented.keys()].sort());
  });

  test("documented error codes have the status the docs give, and documented refusals answer with them", async () => {
    const statuses: string[] = [];
    for (const file of ALL_DOCS) {
      for (const m of read(file).matchAll(/`([a-z_]+)`\s*\(?(?:HTTP )?([45]\d\d)\b/g)) {
        const [, code = "", status] = m;
        if (!(code in httpStatusOf) && !code.includes("_")) continue; // `ecdsa` (256, …) is no error code
        if (httpStatusOf[code as ErrorCode] !== Number(status))
          statuses.push(`${file}: ${code} ${status}, the server: ${httpStatusOf[code as ErrorCode]}`);
      }
    }
    assert.deepEqual(statuses, []);

    await custos.call("POST", "/v1/platform/orgs", { name: "acme" });
    await custos.call("POST", "/v1/platform/orgs/acme/spaces", { name: "prod" });
    await custos.call("POST", "/v1/keys", { name: "app-a", purpose: "encrypt" });
    await custos.call("POST", "/v1/keys", { name: "refusals-sign", purpose: "sign" });
    const old = ((await custos.call("POST", "/v1/keys/app-a/encrypt", { plaintext: "aGk=" })).body as Json).ciphertext;
    await custos.call("POST", "/v1/keys/app-a/rotate");
    await custos.call("PATCH", "/v1/keys/app-a", { minDecryptionVersion: 2 });
    const cases: [string, string, string, unknown, string, RegExp?][] = [
      ["api.md:61", "PATCH", "/v1/users/admin", { disabled: true }, "conflict"],
      ["api.md:97", "GET", "/v1/audit?limit=10000", undefined, "invalid_request"],
      ["broker.md:26", "POST", "/v1/platform/orgs", { name: "shared" }, "invalid_request"],
      ["broker.md:72", "DELETE", "/v1/platform/orgs/acme", undefined, "conflict"],
      [
        "broker.md:173",
        "POST",
        "/v1/broker/exchange",
        { token: "cbt.x.y", instance: "web-1", csr: "x" },
        "unauthenticated",
        /^invalid bootstrap token$/,
      ],
      ["ssh-ca.md:172", "DELETE", "/v1/ssh/roles/owner", undefined, "conflict"],
      ["ssh-ca.md:197", "POST", "/v1/ssh/sign", { role: "no-such-role", publicKey: "ssh-ed25519 AAAA" }, "not_found"],
      ["ssh-ca.md:198", "POST", "/v1/ssh/sign", { role: "owner", publicKey: "not a key" }, "invalid_request"],
      [
        "ciphertext-format.md:86",
        "POST",
        "/v1/keys/app-a/decrypt",
        { ciphertext: "custos:v1:AAAA" },
        "decryption_failed",
        /^decryption failed$/,
      ],
      [
        "ciphertext-format.md:98",
        "POST",
        "/v1/keys/refusals-sign/decrypt",
        { ciphertext: old },
        "key_purpose_mismatch",
      ],
      [
        "ciphertext-format.md:104",
        "POST",
        "/v1/keys/app-a/decrypt",
        { ciphertext: old },
        "version_too_old",
        /^key "app-a" version 1 is below minDecryptionVersion 2$/,
      ],
    ];
    for (const [where, method, path, body, code, message] of cases) {
      const r = await custos.call(method, path, body);
      const error = (r.body as { error?: { code?: string; message?: string } } | null)?.error;
      assert.equal(error?.code, code, `${where}: ${r.text}`);
      assert.equal(r.status, httpStatusOf[code as ErrorCode], `${where}: ${r.text}`);
      if (message) assert.match(error?.message ?? "", message, where);
    }
  });

  test("the exit codes `custos --help` lists are the ones the binary exits with", async () => {
    const help = custos.cli(["--help"]);
    const listed = /Exit codes:([\s\S]*?)\.\s*$/.exec(help.stdout)?.[1] ?? "";
    const codes = [...listed.matchAll(/(?:^|,)\s*(\d+) [a-z]/g)].map((m) => Number(m[1]));
    assert.deepEqual(codes, [EXIT_OK, EXIT_CLIENT, EXIT_SERVER, EXIT_USAGE]);
    const unreachable = `https://127.0.0.1:${await freePort()}`;
    const runs: [number, ReturnType<CustosInstance["cli"]>][] = [
      [EXIT_OK, custos.cli(["whoami"])],
      [EXIT_CLIENT, custos.cli(["key", "show", "no-such-key"])],
      [EXIT_SERVER, custos.cli(["whoami"], { env: { CUSTOS_ADDR: unreachable } })],
      [EXIT_USAGE, custos.cli(["no-such-command"])],
    ];
    for (const [expected, r] of runs) assert.equal(r.status, expected, r.stderr);
  });
});

test("every `custos …` line in the README and the docs names real commands and only flags their --help lists", async () => {
  const rootHelp = await helpOf([]);
  const problems: string[] = [];
  const lines = documentedCommandLines();
  assert.ok(lines.length > 20, `only ${lines.length} command lines read`);
  for (const { where, line } of lines) {
    const words = line.split(" ");
    const path: string[] = [];
    let alternativesChecked = false;
    let helps = [rootHelp];
    for (const word of words) {
      const subs = subcommandsIn(helps.at(-1) ?? "");
      if (word.includes("|")) {
        const alternatives = word.split("|").filter((w) => /^[a-z][a-z-]*$/.test(w));
        for (const alt of alternatives)
          if (!subs.includes(alt)) problems.push(`${where}: custos ${[...path, alt].join(" ")} is no command`);
        alternativesChecked = true;
        break;
      }
      if (!/^[a-z][a-z-]*$/.test(word) || !subs.includes(word)) break;
      path.push(word);
      helps.push(await helpOf(path));
    }
    if (path.length === 0 && !alternativesChecked && words[0] !== "…")
      problems.push(`${where}: "custos ${line}" names no command`);
    if (path.length === 0) continue;
    const last = helps.at(-1) ?? "";
    helps = [rootHelp, last];
    for (const sub of subcommandsIn(last)) helps.push(await helpOf([...path, sub]));
    for (const [flag] of line.matchAll(/(?<![\w-])--[a-z][a-z-]*/g)) {
      if (!helps.some((h) => new RegExp(`(^|[\\s,])${flag}\\b`, "m").test(h)))
        problems.push(`${where}: custos ${path.join(" ")} has no ${flag}`);
    }
  }
  assert.deepEqual(problems, []);
});

test("make run's chain agrees with itself: dev-token.sh makes the token and PIN file the default config reads, served where the README says", () => {
  const makefile = read("Makefile");
  const target = (name: string) => new RegExp(`^${name}: (.*)\n((?:\t.*\n)+)`, "m").exec(makefile);
  const run = target("run");
  const setup = target("setup");
  assert.ok(run && setup, "Makefile has run and setup targets");
  assert.deepEqual((run[1] ?? "").split(" "), ["setup"]);
  assert.deepEqual((setup[1] ?? "").split(" ").sort(), ["build", "deps", "dev-token"]);
  assert.match(setup[2] ?? "", /\$\(CUSTOS\) init\n/);
  assert.match(run[2] ?? "", /exec \$\(CUSTOS\) server\n/);
  assert.match(makefile, /^CUSTOS := node bin\/custos\.js$/m);

  const devToken = read("scripts/dev-token.sh");
  const label = /--label (\S+)/.exec(devToken)?.[1];
  assert.match(devToken, /^var=\$\(pwd\)\/var$/m);
  assert.match(devToken, /"\$var\/hsm\.pin"/);

  const empty = mkdtempSync(join(tmpdir(), "custos-defaults-"));
  try {
    writeFileSync(join(empty, "none.json"), "{}");
    const config = loadConfig({ env: { CUSTOS_CONFIG: join(empty, "none.json") } });
    assert.equal(config.hsm.tokenLabel, label);
    assert.equal(config.hsm.pinFile, resolve("var/hsm.pin"));
    assert.equal(config.dataDir, resolve("var"));
    assert.equal(config.store.path.startsWith(`${resolve("var")}/`), true, "the SQLite store is under var/");
    const served = /serves (https:\/\/[0-9.]+:\d+)/.exec(read("README.md"))?.[1];
    assert.equal(`https://${config.listen.host}:${config.listen.port}`, served);
    assert.match(read("docs/api.md"), new RegExp(`HTTPS on \`${served}\` by default`));
  } finally {
    rmSync(empty, { recursive: true, force: true });
  }
});

test("the README's account of `make run` and `make test` is the Makefile's", () => {
  const makefile = read("Makefile");
  const printed = /try:\s+(.*)"$/m.exec(makefile)?.[1] ?? "";
  const block = /first command to try:\n+```sh\n([\s\S]*?)```/.exec(read("README.md"))?.[1] ?? "";
  assert.ok(printed);
  assert.ok(block.includes(printed), `make run prints "${printed}"; the README shows:\n${block}`);
  // "the same set-up": make test goes through the set-up make run does (token, store, init).
  const prerequisites = (target: string) => new RegExp(`^${target}: (.*)$`, "m").exec(makefile)?.[1]?.split(" ") ?? [];
  assert.ok(prerequisites("run").includes("setup"), `make run depends on ${prerequisites("run")}`);
  assert.ok(prerequisites("test").includes("setup"), `make test depends on ${prerequisites("test")}`);
  assert.ok(prerequisites("setup").includes("dev-token"), `the set-up is ${prerequisites("setup")}`);
});
