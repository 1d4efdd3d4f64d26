/** The `custos` executable's entry point (bin/custos.js imports this). */
import { processIo } from "./io.js";
import { run } from "./run.js";

// exitCode rather than exit(): stdout may still be draining into a pipe.
process.exitCode = await run(process.argv.slice(2), processIo());
