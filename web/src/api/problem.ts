// problem+json (RFC 9457) errors from the manager, and mapping them onto form fields.

export class ApiError extends Error {
  readonly status: number;
  readonly type: string;
  readonly field: string | undefined;
  readonly detail: string;
  constructor(status: number, body: { type?: string; title?: string; detail?: string; field?: string }) {
    super(body.detail ?? body.title ?? `HTTP ${status}`);
    this.status = status;
    this.type = body.type ?? '';
    this.field = body.field || undefined;
    this.detail = body.detail ?? body.title ?? `HTTP ${status}`;
  }
  // The problem type's last path segment ("invalid-field", "totp-required", …).
  get slug(): string {
    return this.type.split('/').pop() ?? '';
  }
}

export class NetworkError extends Error {}

// The top-level form field a server field path names: "ports[1]" → "ports",
// "backends[0].address" → "backends", "health_check.path" → "health_check".
export function formFieldOf(field: string | undefined): string | undefined {
  if (!field) return undefined;
  const m = /^[A-Za-z0-9_-]+/.exec(field);
  return m ? m[0] : undefined;
}

// Splits a server error into { field: message } for the form, or a message for the form as a whole.
export function fieldErrors(err: unknown, fields: readonly string[]): { byField: Record<string, string>; general?: string } {
  if (err instanceof ApiError) {
    const f = formFieldOf(err.field);
    if (f && fields.includes(f)) return { byField: { [f]: err.detail } };
    return { byField: {}, general: err.detail };
  }
  if (err instanceof Error) return { byField: {}, general: err.message };
  return { byField: {}, general: String(err) };
}
