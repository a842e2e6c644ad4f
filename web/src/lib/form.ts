// Form fields described as data (like the manager's resource specs): how a value is edited, checked
// on the client (mirroring the server), and turned into the JSON the API takes.
import { eachItem, splitList, hostPort, intRange, type Check } from './validate';

export type FieldKind = 'text' | 'textarea' | 'number' | 'bool' | 'select' | 'multi' | 'ids' | 'list' | 'backends' | 'json';

export interface FieldDef {
  name: string;
  label: string;
  kind: FieldKind;
  required?: boolean;
  createOnly?: boolean; // fixed after creation (cluster_id)
  help?: string;
  check?: Check; // text / number / select value
  itemCheck?: Check; // list items
  options?: readonly string[]; // select / multi
  ref?: 'clusters' | 'services' | 'certificates'; // select / ids: choose among these objects
  nullable?: boolean; // select with a "none" choice → null
  numeric?: boolean; // list items that look like numbers are sent as numbers (ports)
  writeOnly?: boolean; // never shown back (keys, passwords)
  defaultValue?: unknown;
}

export type FormValues = Record<string, unknown>;

// The editing representation of an API value.
export function toForm(f: FieldDef, v: unknown): unknown {
  switch (f.kind) {
    case 'bool':
      return typeof v === 'boolean' ? v : Boolean(f.defaultValue ?? false);
    case 'number':
    case 'select':
      return v === undefined || v === null ? String(f.defaultValue ?? '') : String(v);
    case 'multi':
      return Array.isArray(v) ? v.map(String) : ((f.defaultValue as string[] | undefined) ?? []);
    case 'ids':
      return Array.isArray(v) ? v.map(Number) : [];
    case 'list':
      return Array.isArray(v) ? v.map(String).join(', ') : String(f.defaultValue ?? '');
    case 'backends':
      return Array.isArray(v)
        ? (v as { address: string; weight?: number }[]).map((b) => `${b.address} ${b.weight ?? 1}`).join('\n')
        : '';
    case 'json':
      return v === undefined || v === null ? '' : JSON.stringify(v, null, 2);
    default:
      return typeof v === 'string' ? v : String(f.defaultValue ?? '');
  }
}

export function emptyForm(fields: readonly FieldDef[]): FormValues {
  return Object.fromEntries(fields.map((f) => [f.name, toForm(f, undefined)]));
}

export function formFromObject(fields: readonly FieldDef[], obj: Record<string, unknown>): FormValues {
  return Object.fromEntries(fields.map((f) => [f.name, f.writeOnly ? toForm(f, undefined) : toForm(f, obj[f.name])]));
}

// "host:port weight" lines → [{address, weight}]
export function parseBackends(s: string): { value?: { address: string; weight: number }[]; error?: string } {
  const out: { address: string; weight: number }[] = [];
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean);
  for (let i = 0; i < lines.length; i++) {
    const [address = '', weight = '1', ...rest] = (lines[i] ?? '').split(/\s+/);
    const e = hostPort(address) ?? intRange(1, 1000)(weight) ?? (rest.length ? 'expected "host:port weight"' : undefined);
    if (e) return { error: `[${i}] ${e}` };
    out.push({ address, weight: Number(weight) });
  }
  return { value: out };
}

function isEmpty(f: FieldDef, v: unknown): boolean {
  if (f.kind === 'bool') return false;
  if (Array.isArray(v)) return v.length === 0;
  return v === '' || v === undefined || v === null;
}

// Converts one field; returns the API value or an error message.
export function fromForm(f: FieldDef, v: unknown): { value?: unknown; error?: string; omit?: boolean } {
  if (isEmpty(f, v)) {
    if (f.required) return { error: 'required' };
    if (f.kind === 'select' && f.nullable) return { value: null };
    if (f.kind === 'list' || f.kind === 'multi' || f.kind === 'ids') return { value: [] };
    if (f.kind === 'text' || f.kind === 'textarea') return f.writeOnly ? { omit: true } : { value: '' };
    return { omit: true };
  }
  switch (f.kind) {
    case 'bool':
      return { value: Boolean(v) };
    case 'number': {
      const s = String(v).trim();
      const e = f.check?.(s) ?? (/^-?\d+$/.test(s) ? undefined : 'must be an integer');
      return e ? { error: e } : { value: Number(s) };
    }
    case 'select': {
      const s = String(v);
      if (f.ref) return { value: Number(s) };
      const e = f.check?.(s);
      return e ? { error: e } : { value: s };
    }
    case 'multi':
      return { value: v as string[] };
    case 'ids':
      return { value: v as number[] };
    case 'list': {
      const items = splitList(String(v));
      const e = f.itemCheck ? eachItem(items, f.itemCheck) : undefined;
      if (e) return { error: e };
      return { value: f.numeric ? items.map((x) => (/^\d+$/.test(x) ? Number(x) : x)) : items };
    }
    case 'backends': {
      const r = parseBackends(String(v));
      return r.error ? { error: r.error } : { value: r.value };
    }
    case 'json': {
      try {
        return { value: JSON.parse(String(v)) as unknown };
      } catch {
        return { error: 'not valid JSON' };
      }
    }
    default: {
      const s = String(v);
      const e = f.check?.(s);
      return e ? { error: e } : { value: s };
    }
  }
}

// The request body (all fields on create; only changed ones on edit) and per-field errors.
export function buildBody(
  fields: readonly FieldDef[],
  values: FormValues,
  original?: FormValues,
): { body: Record<string, unknown>; errors: Record<string, string> } {
  const body: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const f of fields) {
    if (original && f.createOnly) continue;
    const v = values[f.name];
    if (original && JSON.stringify(original[f.name]) === JSON.stringify(v)) continue;
    const r = fromForm(f, v);
    if (r.error) errors[f.name] = r.error;
    else if (!r.omit) body[f.name] = r.value;
  }
  return { body, errors };
}
