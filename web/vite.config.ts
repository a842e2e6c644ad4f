/// <reference types="vitest/config" />
import { defineConfig, type Plugin } from 'vite';
import react from '@vitejs/plugin-react';
import { gzipSync } from 'node:zlib';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

// Writes a .gz beside every text file of the build; the manager serves it to clients that accept
// gzip. Done after the files are written: chunk code seen earlier still has Vite's placeholders.
function precompress(): Plugin {
  return {
    name: 'marchproxy-precompress',
    apply: 'build',
    writeBundle(opts, bundle) {
      const dir = opts.dir ?? 'dist';
      for (const name of Object.keys(bundle)) {
        if (!/\.(js|css|html|svg|json)$/.test(name)) continue;
        const file = path.join(dir, name);
        writeFileSync(`${file}.gz`, gzipSync(readFileSync(file), { level: 9 }));
      }
    },
  };
}

const manager = process.env.MARCHPROXY_MANAGER ?? 'http://127.0.0.1:8000';

export default defineConfig({
  plugins: [react(), precompress()],
  server: {
    // `npm run dev` talks to a running manager (REST and the events WebSocket).
    proxy: { '/api': { target: manager, changeOrigin: true, ws: true } },
  },
  build: {
    target: 'es2022',
    chunkSizeWarningLimit: 700,
    rollupOptions: {
      output: {
        manualChunks(id: string) {
          // Stable vendor chunks for the shell; charts (recharts) stay with the pages that use them.
          if (/node_modules\/(@mui|@emotion)\//.test(id)) return 'mui';
          if (/node_modules\/(react|react-dom|scheduler|react-router|react-router-dom)\//.test(id)) return 'react';
          return undefined;
        },
      },
    },
  },
  test: {
    environment: 'jsdom',
    globals: true,
    setupFiles: ['src/test/setup.ts'],
    include: ['src/**/*.test.{ts,tsx}'],
    testTimeout: 60_000, // a loaded 2-core CI machine; no test asserts on time
  },
});
