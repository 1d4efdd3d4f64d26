#!/usr/bin/env node
// Runs the built CLI when there is one, else the TypeScript sources through tsx,
// so `npx custos` works in a checkout before and after `npm run build`.
import { existsSync } from "node:fs";

const built = new URL("../dist/src/cli/main.js", import.meta.url);
if (existsSync(built)) {
  await import(built.href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import(new URL("../src/cli/main.ts", import.meta.url).href);
}
