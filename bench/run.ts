/**
 * `npm run bench -- <name> [args]`: runs bench/<name>.ts. Benchmarks print their
 * figures beside the limit measured in the same run; they are not tests.
 */
const [name, ...args] = process.argv.slice(2);
const known = ["backup", "broker", "core", "envelope", "hsm", "metrics", "pki", "ssh", "store"];
if (!name || !known.includes(name)) {
  console.error(`usage: npm run bench -- <${known.join("|")}> [args]`);
  process.exit(64);
}
const module = (await import(`./${name}.ts`)) as { default: (args: string[]) => Promise<void> };
await module.default(args);
