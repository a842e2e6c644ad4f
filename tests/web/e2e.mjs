// End-to-end test of the web UI in a real Chromium (Debian's /usr/bin/chromium, headless) against a
// real `marchproxy manager` on SQLite started here, serving the built UI (web/dist).
//
//   node tests/web/e2e.mjs        (run from the repository root; `npm run e2e` in web/ does the same)
//   E2E_OUT=dir  where screenshots and the manager log go (default build/web-e2e)
//   MARCHPROXY_BIN=path  the binary (default build/release/src/cli/marchproxy)
//
// Steps: admin enrols TOTP (API), logs in through the UI with the 2FA step (code computed here),
// creates a cluster (API key shown once), services, a mapping, a port forward and a route through the forms; sees a
// client-side and a server-side validation error next to the field; sees the audit entries and the
// chain verification; sees a change made through the API appear live on an open page; a viewer sees
// no edit controls; the network banner appears when the manager goes away and clears when it is back.
// Prints "N passed, N failed".
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const require = createRequire(path.join(root, 'web/package.json'));
const { chromium } = require('playwright-core');

const OUT = path.resolve(process.env.E2E_OUT ?? path.join(root, 'build/web-e2e'));
const BIN = process.env.MARCHPROXY_BIN ?? path.join(root, 'build/release/src/cli/marchproxy');
const UI = path.join(root, 'web/dist');
const ADMIN_PW = 'e2e-admin-password-1';
fs.mkdirSync(OUT, { recursive: true });

// --- TOTP (RFC 6238, SHA-1, 6 digits, 30 s) -----------------------------------------------------
function base32(s) {
  const alpha = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const ch of s.replace(/=+$/, '').toUpperCase()) bits += alpha.indexOf(ch).toString(2).padStart(5, '0');
  const out = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) out.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(out);
}
function totp(secret, t = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(t / 30000)));
  const h = createHmac('sha1', base32(secret)).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1e6).padStart(6, '0');
}
let lastCode = '';
async function freshCode(secret) {
  // A code may be accepted only once: wait for the next 30 s step rather than reuse one.
  while (totp(secret) === lastCode) await new Promise((r) => setTimeout(r, 500));
  lastCode = totp(secret);
  return lastCode;
}

// --- the manager ---------------------------------------------------------------------------------
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mp-e2e-'));
const logPath = path.join(OUT, 'manager.log');
let mgr;
let base;
let port = 0;
let controlPort = 0;
async function startManager() {
  const log = fs.openSync(logPath, 'a');
  const start = fs.statSync(logPath).size;
  mgr = spawn(BIN, ['manager', '--listen', `127.0.0.1:${port}`, '--control-listen', `127.0.0.1:${controlPort}`, '--data-dir', dataDir, '--ui-dir', UI], {
    env: { ...process.env, MARCHPROXY_ADMIN_PASSWORD: ADMIN_PW },
    stdio: ['ignore', log, log],
  });
  const deadline = Date.now() + 30000;
  for (;;) {
    const text = fs.readFileSync(logPath, 'utf8').slice(start);
    const m = /listening: listener=manager address=\S+:(\d+)/.exec(text);
    const c = /listening: listener=control address=\S+:(\d+)/.exec(text);
    if (m && c) {
      controlPort = Number(c[1]);
      port = Number(m[1]);
      base = `http://127.0.0.1:${port}`;
      return;
    }
    if (mgr.exitCode !== null || Date.now() > deadline) throw new Error(`manager did not start:\n${text}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
async function stopManager() {
  if (!mgr || mgr.exitCode !== null) return;
  const done = new Promise((r) => mgr.once('exit', r));
  mgr.kill('SIGTERM');
  await done;
}

async function api(method, p, body, token) {
  const r = await fetch(base + '/api/v1' + p, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  const json = text ? JSON.parse(text) : undefined;
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
  return json;
}

// --- test bookkeeping ----------------------------------------------------------------------------
const results = [];
const skipped = [];
const notes = {};
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok    ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL  ${name}: ${e instanceof Error ? e.stack : e}`);
    // Leave the page usable for the next step: a screenshot of the failure, then close any dialog.
    try {
      await currentPage?.screenshot({ path: path.join(OUT, `FAIL-${results.length}.png`), fullPage: true });
      await currentPage?.keyboard.press('Escape');
      await currentPage?.keyboard.press('Escape');
    } catch {
      /* the page may be gone */
    }
  }
}
let currentPage;
function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}
const shot = (page, name) => page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: true });

// MUI select: open it by its label, pick options by their text, close.
async function choose(dialog, label, options, multi = false) {
  await dialog.getByRole('combobox', { name: label }).click();
  const page = dialog.page();
  for (const o of options) await page.getByRole('option', { name: o }).click();
  if (multi) await page.keyboard.press('Escape');
  await page.getByRole('listbox').waitFor({ state: 'detached' });
}
const field = (scope, name) => scope.locator(`[data-field="${name}"]`);

async function main() {
  expect(fs.existsSync(path.join(UI, 'index.html')), `no built UI in ${UI}: run npm run build in web/`);
  expect(fs.existsSync(BIN), `no manager binary at ${BIN}`);
  await startManager();
  const admin = (await api('POST', '/auth/login', { username: 'admin', password: ADMIN_PW })).access_token;
  const enr = await api('POST', '/auth/totp/enroll', {}, admin);
  await api('POST', '/auth/totp/verify', { code: await freshCode(enr.secret) }, admin);
  await api('POST', '/users', { username: 'viewer', password: 'viewer-password-1', role: 'viewer' }, admin);

  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--no-first-run', '--disable-default-apps', '--disable-dev-shm-usage'],
  });
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 850 } });
  const page = await ctx.newPage();
  currentPage = page;
  page.setDefaultTimeout(15000);
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  await step('login page loads (first load timed)', async () => {
    const t0 = Date.now();
    await page.goto(base + '/', { waitUntil: 'load' });
    await page.getByRole('button', { name: 'Sign in' }).waitFor();
    notes.first_load_ms = Date.now() - t0;
    const nav = await page.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0];
      return { domContentLoaded: Math.round(n.domContentLoadedEventEnd), load: Math.round(n.loadEventEnd) };
    });
    notes.navigation = nav;
    await shot(page, '01-login');
  });

  await step('log in with password, then the 2FA code', async () => {
    await page.getByLabel('User name').fill('admin');
    await page.getByLabel('Password').fill('wrong-password-x');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByTestId('login-error').waitFor();
    await page.getByLabel('Password').fill(ADMIN_PW);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByLabel('Authentication code').fill(await freshCode(enr.secret));
    await shot(page, '02-login-2fa');
    await page.getByRole('button', { name: 'Verify' }).click();
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    await page.getByTestId('live-status').filter({ hasText: 'Live' }).waitFor();
    await shot(page, '03-dashboard');
  });

  let clusterKey = '';
  await step('create a cluster; the API key is shown once with a copy button', async () => {
    await page.getByRole('link', { name: 'Clusters' }).click();
    await page.getByRole('button', { name: 'New cluster' }).click();
    const d = page.getByRole('dialog');
    await field(d, 'name').fill('bad name');
    await field(d, 'syslog_endpoint').fill('logs.internal');
    await d.getByRole('button', { name: 'Create' }).click();
    await d.getByText("may contain only letters, digits, '.', '_' and '-'").waitFor();
    await d.getByText('expected host:port').waitFor();
    await shot(page, '04-cluster-validation');
    await field(d, 'name').fill('prod');
    await field(d, 'syslog_endpoint').fill('logs.internal:514');
    await d.getByRole('button', { name: 'Create' }).click();
    const secret = page.getByTestId('secret-value');
    await secret.waitFor();
    clusterKey = await secret.inputValue();
    expect(clusterKey.startsWith('mpk_'), `cluster key ${clusterKey}`);
    await page.getByRole('button', { name: 'Copy' }).waitFor();
    await shot(page, '05-cluster-key-once');
    await page.getByRole('button', { name: 'Done' }).click();
    await page.getByTestId('row-clusters-prod').waitFor();
  });

  await step('a server error (duplicate name) is shown on the form', async () => {
    await page.getByRole('button', { name: 'New cluster' }).click();
    const d = page.getByRole('dialog');
    await field(d, 'name').fill('prod');
    await d.getByRole('button', { name: 'Create' }).click();
    await d.getByText('a cluster with this name already exists').waitFor();
    await shot(page, '06-cluster-server-error');
    await d.getByRole('button', { name: 'Cancel' }).click();
  });

  await step('create services (one with a JWT secret shown once)', async () => {
    await page.getByRole('link', { name: 'Services' }).click();
    for (const [name, addr, auth] of [['web', 'web.internal', 'none'], ['db', '10.0.0.7', 'jwt']]) {
      await page.getByRole('button', { name: 'New service' }).click();
      const d = page.getByRole('dialog');
      await choose(d, /Cluster/, ['prod (#1)']);
      await field(d, 'name').fill(name);
      await field(d, 'ip_fqdn').fill(addr);
      if (auth !== 'none') await choose(d, /Authentication/, [auth]);
      await d.getByRole('button', { name: 'Create' }).click();
      if (auth !== 'none') {
        await page.getByTestId('secret-value').waitFor();
        await page.getByRole('button', { name: 'Done' }).click();
      }
      await page.getByTestId(`row-services-${name}`).waitFor();
    }
    await shot(page, '07-services');
  });

  await step('create a mapping (web → db, tcp 5432)', async () => {
    await page.getByRole('link', { name: 'Mappings' }).click();
    await page.getByRole('button', { name: 'New mapping' }).click();
    const d = page.getByRole('dialog');
    await choose(d, /Cluster/, ['prod (#1)']);
    await field(d, 'name').fill('web-db');
    await choose(d, /^Source services/, ['web (#1)'], true);
    await choose(d, /Destination services/, ['db (#2)'], true);
    await choose(d, /Protocols/, ['tcp'], true);
    await field(d, 'ports').fill('5432 70000');
    await d.getByRole('button', { name: 'Create' }).click();
    await d.getByText('[1] port 70000 is outside 1-65535').waitFor();
    await field(d, 'ports').fill('5432');
    await d.getByRole('button', { name: 'Create' }).click();
    await page.getByTestId('row-mappings-web-db').waitFor();
    await shot(page, '08-mappings');
  });

  await step('create a port forward (a server-side error on the listen port, then fixed)', async () => {
    await page.getByRole('link', { name: 'Port forwards' }).click();
    await page.getByRole('button', { name: 'New forward' }).click();
    const d = page.getByRole('dialog');
    await choose(d, /Cluster/, ['prod (#1)']);
    await field(d, 'name').fill('pg');
    await field(d, 'listen_address').fill('127.0.0.1:3128'); // the cluster's egress proxy port
    await field(d, 'destination').fill('db.internal:5432');
    await field(d, 'sources').fill('[{"cidr": "10.1.0.0/16", "service_id": 1}]');
    await d.getByRole('button', { name: 'Create' }).click();
    await d.getByText("127.0.0.1:3128 is already the cluster's egress_proxy_address").waitFor();
    await field(d, 'listen_address').fill('127.0.0.1:15432');
    await d.getByRole('button', { name: 'Create' }).click();
    await page.getByTestId('row-forwards-pg').waitFor();
    const row = await page.getByTestId('row-forwards-pg').innerText();
    expect(row.includes('tcp 127.0.0.1:15432') && row.includes('db.internal:5432') && row.includes('10.1.0.0/16'), row);
    await shot(page, '08b-forwards');
  });

  await step('create an ingress route with weighted backends', async () => {
    await page.getByRole('link', { name: 'Ingress routes' }).click();
    await page.getByRole('button', { name: 'New route' }).click();
    const d = page.getByRole('dialog');
    await choose(d, /Cluster/, ['prod (#1)']);
    await field(d, 'name').fill('site');
    await field(d, 'hosts').fill('site.example.com, *.site.example.com');
    await field(d, 'backends').fill('10.0.0.1:8080 3\n10.0.0.2:8080 1');
    await d.getByRole('button', { name: 'Create' }).click();
    await page.getByTestId('row-routes-site').waitFor();
    const row = await page.getByTestId('row-routes-site').innerText();
    expect(row.includes('10.0.0.1:8080×3'), row);
    await shot(page, '09-routes');
  });

  await step('the audit log shows the changes and a verified chain', async () => {
    await page.getByRole('link', { name: 'Audit log' }).click();
    for (const a of ['cluster.create', 'service.create', 'mapping.create', 'route.create', 'auth.login'])
      await page.getByTestId(`audit-${a}`).first().waitFor();
    const chain = await page.getByTestId('audit-chain').innerText();
    expect(chain.includes('Hash chain verified'), chain);
    await shot(page, '10-audit');
  });

  await step('a change made through the API appears live in the open page', async () => {
    await page.getByRole('link', { name: 'Clusters' }).click();
    await page.getByTestId('row-clusters-prod').waitFor();
    const t0 = Date.now();
    await api('POST', '/clusters', { name: 'from-api', description: 'made with curl' }, admin);
    await page.getByTestId('row-clusters-from-api').waitFor();
    notes.live_update_ms = Date.now() - t0;
    const c = (await api('GET', '/clusters?name=from-api', undefined, admin)).items[0];
    await api('PATCH', `/clusters/${c.id}`, { description: 'edited live' }, admin);
    await page.getByTestId('row-clusters-from-api').getByText('edited live').waitFor();
    await shot(page, '11-live-update');
  });

  for (const [link, name] of [['Proxies', '12-proxies'], ['Certificates', '13-certificates'], ['Users & roles', '14-users'], ['Licence', '15-licence'], ['Dashboard', '16-dashboard-after']]) {
    await step(`page ${link} renders`, async () => {
      await page.getByRole('link', { name: link, exact: true }).click();
      await page.getByRole('heading').first().waitFor();
      await page.waitForLoadState('networkidle');
      await shot(page, name);
    });
  }
  await step('profile: TOTP on, API token created and shown once', async () => {
    await page.getByRole('link', { name: /admin \(admin\)/ }).click();
    await page.getByText('Two-factor authentication (on)').waitFor();
    await page.getByLabel('Token name').fill('ci');
    await page.getByRole('button', { name: 'Create', exact: true }).click();
    const t = await page.getByTestId('secret-value').inputValue();
    expect(t.startsWith('mpt_'), t);
    await shot(page, '17-profile-token');
    await page.getByRole('button', { name: 'Done' }).click();
  });

  // A real ingress registers with the cluster key shown above; the open Proxies page shows it
  // online without a reload (the manager publishes proxy events on the WebSocket).
  await step('an ingress registers and comes online live on the Proxies page', async () => {
    await page.getByRole('link', { name: 'Proxies', exact: true }).click();
    await page.getByText(/No proxies have registered yet/).waitFor();
    const caFile = path.join(dataDir, 'e2e-ca.pem');
    const keyFile = path.join(dataDir, 'e2e-cluster.key');
    fs.writeFileSync(caFile, await (await fetch(base + '/api/v1/ca.pem')).text());
    fs.writeFileSync(keyFile, clusterKey, { mode: 0o600 });
    const log = fs.openSync(path.join(OUT, 'ingress.log'), 'a');
    const ingress = spawn(BIN, ['ingress', '--manager', `https://127.0.0.1:${controlPort}`, '--manager-ca', caFile,
      '--cluster-key-file', keyFile, '--name', 'e2e-ingress', '--state-dir', path.join(dataDir, 'ingress-state'),
      '--bind', 'http=127.0.0.1:0', '--admin', '127.0.0.1:0'], { stdio: ['ignore', log, log] });
    try {
      const row = page.getByTestId('row-proxies-e2e-ingress');
      await row.waitFor({ timeout: 30000 });
      await row.getByText('online').waitFor({ timeout: 30000 });
      expect((await row.textContent()).includes('ingress'), 'kind shown');
      await shot(page, '19-proxy-online');
    } finally {
      const done = new Promise((r) => ingress.once('exit', r));
      ingress.kill('SIGTERM');
      await done;
    }
  });

  await step('a viewer sees configuration but no edit controls', async () => {
    const vctx = await browser.newContext({ viewport: { width: 1366, height: 850 } });
    const v = await vctx.newPage();
    v.setDefaultTimeout(15000);
    await v.goto(base + '/');
    await v.getByLabel('User name').fill('viewer');
    await v.getByLabel('Password').fill('viewer-password-1');
    await v.getByRole('button', { name: 'Sign in' }).click();
    await v.getByRole('heading', { name: 'Dashboard' }).waitFor();
    expect((await v.getByRole('link', { name: 'Audit log' }).count()) === 0, 'viewer sees the audit log link');
    for (const [link, row, create] of [['Clusters', 'row-clusters-prod', 'New cluster'], ['Services', 'row-services-web', 'New service'], ['Mappings', 'row-mappings-web-db', 'New mapping'], ['Ingress routes', 'row-routes-site', 'New route']]) {
      await v.getByRole('link', { name: link }).click();
      await v.getByTestId(row).waitFor();
      expect((await v.getByRole('button', { name: create }).count()) === 0, `viewer sees ${create}`);
      expect((await v.getByRole('button', { name: 'Edit' }).count()) === 0, `viewer sees Edit on ${link}`);
      expect((await v.getByRole('button', { name: 'Delete' }).count()) === 0, `viewer sees Delete on ${link}`);
    }
    await shot(v, '18-viewer-clusters');
    await vctx.close();
  });

  await step('network loss shows a banner that clears by itself', async () => {
    await page.getByRole('link', { name: 'Clusters' }).click();
    await stopManager();
    await page.getByTestId('network-banner').waitFor({ timeout: 30000 });
    await shot(page, '19-network-banner');
    await startManager(); // same port and data
    await page.getByTestId('network-banner').waitFor({ state: 'detached', timeout: 60000 });
    await page.getByTestId('live-status').filter({ hasText: 'Live' }).waitFor({ timeout: 60000 });
  });

  await step('no uncaught errors in the page', async () => {
    expect(consoleErrors.length === 0, consoleErrors.join('\n'));
  });

  await browser.close();
}

try {
  await main();
} catch (e) {
  results.push({ name: 'setup', ok: false });
  console.log(`FAIL  setup: ${e instanceof Error ? e.stack : e}`);
} finally {
  await stopManager();
  fs.rmSync(dataDir, { recursive: true, force: true });
}
fs.writeFileSync(path.join(OUT, 'notes.json'), JSON.stringify(notes, null, 2));
console.log(`notes: ${JSON.stringify(notes)}`);
console.log(`screenshots: ${OUT}`);
const failed = results.filter((r) => !r.ok).length;
console.log(`${results.length - failed} passed, ${failed} failed, ${skipped.length} skipped`);
process.exit(failed ? 1 : 0);
