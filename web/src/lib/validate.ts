// Client-side checks that mirror the manager's (src/manager/api/validate.cc). Each returns an error
// message, or undefined when the value is fine; the server stays the authority.

export type Check = (value: string) => string | undefined;

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function isIpv4(s: string): boolean {
  return IPV4.test(s);
}

export function isIpv6(s: string): boolean {
  if (!/^[0-9A-Fa-f:.]+$/.test(s) || !s.includes(':')) return false;
  let body = s;
  let groupsNeeded = 8;
  const lastColon = s.lastIndexOf(':');
  const tail = s.slice(lastColon + 1);
  if (tail.includes('.')) {
    if (!isIpv4(tail)) return false;
    body = s.slice(0, lastColon + 1) + '0:0';
  }
  const dbl = body.split('::');
  if (dbl.length > 2) return false;
  const part = (x: string) => (x === '' ? [] : x.split(':'));
  const groups = [...part(dbl[0] ?? ''), ...(dbl.length === 2 ? part(dbl[1] ?? '') : [])];
  if (!groups.every((g) => /^[0-9A-Fa-f]{1,4}$/.test(g))) return false;
  return dbl.length === 2 ? groups.length < groupsNeeded : groups.length === groupsNeeded;
}

export function isIp(s: string): boolean {
  return isIpv4(s) || isIpv6(s);
}

export function isFqdn(host: string): boolean {
  const s = host.endsWith('.') ? host.slice(0, -1) : host;
  if (s.length === 0 || s.length > 253) return false;
  const labels = s.split('.');
  for (const l of labels) {
    if (l.length === 0 || l.length > 63 || l.startsWith('-') || l.endsWith('-')) return false;
    if (!/^[A-Za-z0-9-]+$/.test(l)) return false;
  }
  return !/^\d+$/.test(labels[labels.length - 1] ?? ''); // "1.2.3.999" is a broken IP, not a name
}

export const name: Check = (s) => {
  if (s.length === 0) return 'must not be empty';
  if (s.length > 64) return 'longer than 64 characters';
  if (!/^[A-Za-z0-9]/.test(s)) return 'must start with a letter or digit';
  if (!/^[A-Za-z0-9._-]+$/.test(s)) return "may contain only letters, digits, '.', '_' and '-'";
  return undefined;
};

export const cidr: Check = (s) => {
  const slash = s.indexOf('/');
  if (slash < 0) return 'expected address/prefix';
  const addr = s.slice(0, slash);
  const pfx = s.slice(slash + 1);
  const max = isIpv4(addr) ? 32 : isIpv6(addr) ? 128 : -1;
  if (max < 0) return `"${addr}" is not an IP address`;
  if (!/^\d{1,3}$/.test(pfx) || Number(pfx) > max) return `prefix length must be 0-${max}`;
  return undefined;
};

export const hostOrIp: Check = (s) => {
  if (s.includes('/')) return cidr(s);
  if (!isIp(s) && !isFqdn(s)) return `"${s}" is neither an IP address, a CIDR nor a host name`;
  return undefined;
};

export const hostPattern: Check = (s) => {
  const rest = s.startsWith('*.') ? s.slice(2) : s;
  return isFqdn(rest) ? undefined : `"${s}" is not a host name (a leading "*." is allowed)`;
};

export const hostPort: Check = (s) => {
  const colon = s.lastIndexOf(':');
  if (colon <= 0) return 'expected host:port';
  let host = s.slice(0, colon);
  const p = s.slice(colon + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (!isIp(host) && !isFqdn(host)) return `"${host}" is neither an IP address nor a host name`;
  if (!/^\d{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535) return 'port must be 1-65535';
  return undefined;
};

export const optionalHostPort: Check = (s) => (s === '' ? undefined : hostPort(s));

export const port: Check = (s) => {
  const one = (x: string): number | string => {
    if (!/^\d{1,5}$/.test(x)) return `"${x}" is not a port number`;
    const n = Number(x);
    return n < 1 || n > 65535 ? `port ${x} is outside 1-65535` : n;
  };
  const dash = s.indexOf('-');
  if (dash < 0) {
    const r = one(s);
    return typeof r === 'string' ? r : undefined;
  }
  const lo = one(s.slice(0, dash));
  const hi = one(s.slice(dash + 1));
  if (typeof lo === 'string') return lo;
  if (typeof hi === 'string') return hi;
  return lo > hi ? `range ${s} has its low end above its high end` : undefined;
};

export const urlPath: Check = (s) => (s.startsWith('/') ? undefined : 'must start with "/"');

export const intRange =
  (lo: number, hi: number): Check =>
  (s) =>
    /^-?\d+$/.test(s) && Number(s) >= lo && Number(s) <= hi ? undefined : `must be an integer ${lo}-${hi}`;

// Applies `check` to each item of a list, naming the first bad one like the server does ("ports[2]").
export function eachItem(items: readonly string[], check: Check): string | undefined {
  for (let i = 0; i < items.length; i++) {
    const e = check(items[i] ?? '');
    if (e) return `[${i}] ${e}`;
  }
  return undefined;
}

// "a, b  c" → ["a", "b", "c"]
export function splitList(s: string): string[] {
  return s
    .split(/[\s,]+/)
    .map((x) => x.trim())
    .filter((x) => x.length > 0);
}
