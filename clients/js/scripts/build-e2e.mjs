// Bundles the browser tests' React page (e2e/react-app.tsx, with React and the package's own
// src/react.ts) into .e2e-build/, which the demo server serves as /e2e/react-app.js. Not part of
// `npm run build`: the published package (`files`: dist) never contains it.
import { rmSync } from 'node:fs';
import { build } from 'esbuild';

const out = '.e2e-build';
rmSync(out, { recursive: true, force: true });
await build({
  entryPoints: ['e2e/react-app.tsx'],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  jsx: 'automatic',
  // React's development build: StrictMode then mounts, unmounts and remounts every effect.
  define: { 'process.env.NODE_ENV': '"development"' },
  sourcemap: 'inline',
  outfile: `${out}/react-app.js`,
  logLevel: 'warning',
});
