import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseTemplate, renderTemplate, secretsUsed, TemplateError, usesJwt } from "../../src/agent/run-template.js";

const secrets: Record<string, string> = {
  "db/password": "pw-1",
  "acme/prod/web/db/password": "pw-1",
  "shared/ca-bundle": "bundle",
};
const values = {
  spiffeId: "spiffe://custos/org/acme/space/prod/app/web/instance/web-1",
  instance: "web-1",
  jwt: "h.p.s",
  secret: (name: string) => secrets[name],
};

function rejectsWith(text: string, pattern: RegExp): void {
  assert.throws(
    () => parseTemplate(text, "app.tmpl"),
    (e: unknown) => e instanceof TemplateError && pattern.test(e.message),
  );
}

describe("custos run templates", () => {
  test("every placeholder renders, with or without spaces, text around kept byte for byte", () => {
    const t = parseTemplate(
      'a {{ secret "db/password" }} b {{secret "shared/ca-bundle"}}\n{{ spiffe_id }}|{{instance}}|{{  jwt  }}|{{ "{{" }}}\n',
      "app.tmpl",
    );
    assert.equal(
      renderTemplate(t, values),
      "a pw-1 b bundle\nspiffe://custos/org/acme/space/prod/app/web/instance/web-1|web-1|h.p.s|{{}\n",
    );
    assert.deepEqual(secretsUsed(t), ["db/password", "shared/ca-bundle"]);
    assert.equal(usesJwt(t), true);
    assert.equal(usesJwt(parseTemplate("{{ instance }}", "x")), false);
  });

  test("a secret may be named by its whole path", () => {
    assert.equal(renderTemplate(parseTemplate('{{ secret "acme/prod/web/db/password" }}', "t"), values), "pw-1");
  });

  test("text without placeholders passes through; a lone } or { is text", () => {
    const text = "server { listen 443; } # {not a placeholder}\n";
    assert.equal(renderTemplate(parseTemplate(text, "t"), values), text);
    assert.equal(renderTemplate(parseTemplate("", "t"), values), "");
  });

  test("unknown placeholders are errors at parse time, with file, line and column", () => {
    rejectsWith("line one\n  x={{ secret_value }}", /^app\.tmpl:2:5: unknown placeholder \{\{ secret_value \}\}/);
    rejectsWith('{{ env "HOME" }}', /app\.tmpl:1:1: unknown placeholder/);
    rejectsWith("{{}}", /unknown placeholder/);
    rejectsWith("{{ secret db/password }}", /unknown placeholder/);
    rejectsWith('{{ secret "a" "b" }}', /unknown placeholder/);
    rejectsWith("{{ SPIFFE_ID }}", /unknown placeholder/);
    rejectsWith("{{ instance\n}}", /unknown placeholder/);
  });

  test("an unclosed {{ is an error", () => {
    rejectsWith("ok\nthen {{ instance", /app\.tmpl:2:6: "\{\{" is never closed/);
  });

  test("a secret name must be a path of [A-Za-z0-9._-] segments, none . or ..", () => {
    rejectsWith('{{ secret "../etc/passwd" }}', /is not a secret name/);
    rejectsWith('{{ secret "a//b" }}', /is not a secret name/);
    rejectsWith('{{ secret "" }}', /is not a secret name/);
    rejectsWith('{{ secret "a b" }}', /is not a secret name/);
  });

  test("a secret the instance doesn't receive fails the render, naming it but no value", () => {
    const t = parseTemplate('x\n{{ secret "queue/token" }}', "q.tmpl");
    assert.throws(
      () => renderTemplate(t, values),
      (e: unknown) =>
        e instanceof TemplateError &&
        e.message === 'q.tmpl:2:1: secret "queue/token" is not one this instance receives',
    );
  });

  test("an unknown placeholder's message quotes at most 40 characters of it", () => {
    const long = "x".repeat(200);
    assert.throws(
      () => parseTemplate(`{{ ${long} }}`, "t"),
      (e: unknown) => e instanceof TemplateError && !e.message.includes("x".repeat(41)),
    );
  });
});
