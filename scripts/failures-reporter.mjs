// The reporter for standard output: a line per test file as it ends, the run's counts,
// then the tests that really failed (a failing `todo` test is a known bug, not a
// failure), each with its file, its suites and its error. The full TAP goes to a file
// (scripts/run-tests.sh): in TAP the known bugs' `not ok … # TODO` lines come first
// and bury a real failure among 10,000 lines.
import { relative } from 'node:path';
import { inspect } from 'node:util';

const MAX_ERROR_LINES = 30;

export default async function* failuresReporter(source) {
  const open = []; // names of the tests and suites started and not yet ended, by nesting
  const failures = [];
  const summary = []; // the run's counts (tests, pass, fail, …): the runner reports them as diagnostics of no file
  let file; // the file whose tests are running (one file at a time), and its tallies
  for await (const { type, data } of source) {
    const ran = type === 'test:start' || type === 'test:pass' || type === 'test:fail';
    if (ran && data.file !== undefined && data.file !== file?.name) {
      if (file) yield fileLine(file);
      file = { name: data.file, ms: 0, passed: 0, failed: 0 };
    }
    if (type === 'test:start') open[data.nesting] = data.name;
    if (type === 'test:diagnostic' && data.nesting === 0 && data.file === undefined) summary.push(data.message);
    if ((type === 'test:pass' || type === 'test:fail') && data.nesting === 0 && file) {
      file.ms += data.details?.duration_ms ?? 0;
    }
    if (type === 'test:pass' && file) file.passed++;
    if (type !== 'test:fail') continue;
    const failureType = data.details?.error?.failureType;
    // A parent whose only fault is a failed child: the child is listed already.
    if (data.todo !== undefined || failureType === 'subtestsFailed') continue;
    if (file) file.failed++;
    const path = [...open.slice(0, data.nesting), data.name].join(' › ');
    failures.push({ path, file: data.file, error: describe(data.details?.error) });
  }
  if (file) yield fileLine(file);
  yield `\n${summary.map((line) => `# ${line}`).join('\n')}\n`;
  if (failures.length === 0) return;
  yield `\n# FAILED: ${failures.length} test${failures.length === 1 ? '' : 's'} (todo tests are known bugs and are not counted)\n`;
  for (const { path, file, error } of failures) {
    yield `not ok - ${path}\n#   file: ${file ? relative(process.cwd(), file) : 'unknown'}\n`;
    yield `${error.map((line) => `#   ${line}`).join('\n')}\n`;
  }
}

/** `ok` or `FAILED`, the file, how many of its tests and suites passed, and how long they took. */
function fileLine({ name, ms, passed, failed }) {
  const seconds = (ms / 1000).toFixed(1);
  const verdict = failed === 0 ? 'ok' : `FAILED ${failed}`;
  return `${verdict.padEnd(9)} ${relative(process.cwd(), name)} (${passed} passed, ${seconds} s)\n`;
}

function describe(error) {
  if (error === undefined) return ['(no error recorded)'];
  // Errors from the test's own process arrive wrapped; the cause is the one thrown.
  const thrown = error.failureType === 'testCodeFailure' && error.cause ? error.cause : error;
  const text = thrown instanceof Error ? (thrown.stack ?? String(thrown)) : inspect(thrown, { depth: 4 });
  // A test file that failed as a whole (it crashed, or exited non-zero) says how.
  const exit = [error.exitCode != null && `exit code ${error.exitCode}`, error.signal && `signal ${error.signal}`];
  const lines = [...text.split('\n'), ...exit.filter(Boolean)];
  return lines.length > MAX_ERROR_LINES ? [...lines.slice(0, MAX_ERROR_LINES), '…'] : lines;
}
