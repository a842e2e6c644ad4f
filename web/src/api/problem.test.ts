import { ApiError, fieldErrors, formFieldOf } from './problem';

describe('problem+json → form fields', () => {
  const problem = (field: string | undefined, detail: string) =>
    new ApiError(422, { type: 'https://marchproxy.dev/problems/invalid-field', detail, field });

  it('maps nested server field paths to the top-level form field', () => {
    expect(formFieldOf('ports[1]')).toBe('ports');
    expect(formFieldOf('backends[0].address')).toBe('backends');
    expect(formFieldOf('health_check.path')).toBe('health_check');
    expect(formFieldOf(undefined)).toBeUndefined();
  });
  it('puts the detail next to the named field', () => {
    const r = fieldErrors(problem('ports[1]', 'ports[1]: range 90-70 has its low end above its high end'), ['name', 'ports']);
    expect(r.byField).toEqual({ ports: 'ports[1]: range 90-70 has its low end above its high end' });
    expect(r.general).toBeUndefined();
  });
  it('shows errors about fields the form does not have (or none) for the whole form', () => {
    const r = fieldErrors(new ApiError(409, { detail: 'a cluster named "prod" exists', field: '' }), ['name']);
    expect(r.byField).toEqual({});
    expect(r.general).toBe('a cluster named "prod" exists');
    expect(fieldErrors(problem('If-Match', 'changed since you read it'), ['name']).general).toBe('changed since you read it');
  });
  it('knows the problem type slug (the login page asks for a TOTP code on totp-required)', () => {
    expect(new ApiError(401, { type: 'https://marchproxy.dev/problems/totp-required' }).slug).toBe('totp-required');
  });
});
