/**
 * The `custos` command line: `run()` executes one invocation against given streams;
 * the parsers are exported for tools that want the same behaviour. The API client
 * itself is `src/client`.
 */
export {
  CliError,
  clientExitCode,
  EXIT_CLIENT,
  EXIT_OK,
  EXIT_SERVER,
  EXIT_USAGE,
  type ExitCode,
  exitCodeOf,
  formatError,
} from "./errors.js";
export { type CliIo, processIo } from "./io.js";
export { renderRecord, renderTable } from "./output.js";
export {
  addContextPair,
  type PolicyRule,
  parseContextPair,
  parseDuration,
  parseInteger,
  parsePolicyRule,
} from "./parse.js";
export { buildProgram } from "./program.js";
export { run } from "./run.js";
