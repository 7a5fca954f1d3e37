// Builds the TypeScript tests with esbuild (Node 20 cannot run .ts) and runs them with node --test.
// Type checking is `npm run lint`'s job (tsc --noEmit covers src/ and test/).
import { spawnSync } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { build } from 'esbuild';

const out = '.test-build';
rmSync(out, { recursive: true, force: true });
const tests = readdirSync('test')
  .filter((f) => f.endsWith('.test.ts'))
  .map((f) => `test/${f}`);
await build({
  entryPoints: tests,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  outdir: out,
  outExtension: { '.js': '.mjs' },
  external: ['react'],
  logLevel: 'warning',
});
const files = tests.map((f) => `${out}/${f.slice(5, -3)}.mjs`);
const run = spawnSync(
  process.execPath,
  ['--test', '--disable-warning=ExperimentalWarning', ...process.argv.slice(2), ...files],
  { stdio: 'inherit' },
);
process.exit(run.status ?? 1);
