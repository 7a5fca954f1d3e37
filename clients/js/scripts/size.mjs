// Bundle + minify each entry with esbuild, gzip it, and fail when the core passes its budget.
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const BUDGET = 6144;

async function measure(entry) {
  const out = await build({
    entryPoints: [entry],
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2020',
    write: false,
    external: ['react'],
  });
  const code = out.outputFiles[0].contents;
  return { min: code.length, gzip: gzipSync(code, { level: 9 }).length };
}

const core = await measure('src/index.ts');
const react = await measure('src/react.ts');
console.log(`core: ${core.gzip} bytes min+gzip (target <= ${BUDGET}), ${core.min} bytes min`);
console.log(`react entry (core included, react external): ${react.gzip} bytes min+gzip`);
if (core.gzip > BUDGET) {
  console.error(`core is over its budget by ${core.gzip - BUDGET} bytes`);
  process.exit(1);
}
