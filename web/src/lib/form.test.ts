import { buildBody, emptyForm, formFromObject, parseBackends, type FieldDef } from './form';
import { hostPattern, name, port } from './validate';

const fields: FieldDef[] = [
  { name: 'cluster_id', label: 'Cluster', kind: 'select', ref: 'clusters', required: true, createOnly: true },
  { name: 'name', label: 'Name', kind: 'text', required: true, check: name },
  { name: 'hosts', label: 'Hosts', kind: 'list', itemCheck: hostPattern, required: true },
  { name: 'ports', label: 'Ports', kind: 'list', itemCheck: port, numeric: true },
  { name: 'backends', label: 'Backends', kind: 'backends', required: true },
  { name: 'enabled', label: 'Enabled', kind: 'bool', defaultValue: true },
];

describe('forms → request bodies', () => {
  it('builds a create body with typed values', () => {
    const v = { ...emptyForm(fields), cluster_id: '3', name: 'web', hosts: 'a.example.com, *.b.example.com', ports: '443 8000-8100', backends: '10.0.0.1:80 5\n10.0.0.2:80' };
    const { body, errors } = buildBody(fields, v);
    expect(errors).toEqual({});
    expect(body).toEqual({
      cluster_id: 3,
      name: 'web',
      hosts: ['a.example.com', '*.b.example.com'],
      ports: [443, '8000-8100'],
      backends: [
        { address: '10.0.0.1:80', weight: 5 },
        { address: '10.0.0.2:80', weight: 1 },
      ],
      enabled: true,
    });
  });
  it('refuses what the server would refuse, naming the field', () => {
    const v = { ...emptyForm(fields), name: 'bad name', hosts: '', ports: '80 70000', backends: 'web 2000' };
    const { errors } = buildBody(fields, v);
    expect(errors.cluster_id).toBe('required');
    expect(errors.name).toMatch(/letters, digits/);
    expect(errors.hosts).toBe('required');
    expect(errors.ports).toBe('[1] port 70000 is outside 1-65535');
    expect(errors.backends).toBe('[0] expected host:port');
  });
  it('sends only changed fields on edit, never create-only ones', () => {
    const obj = { id: 1, cluster_id: 3, name: 'web', hosts: ['a.example.com'], ports: [443], backends: [{ address: 'x.internal:80', weight: 1 }], enabled: true };
    const orig = formFromObject(fields, obj);
    const { body } = buildBody(fields, { ...orig, name: 'web2', cluster_id: '9' }, orig);
    expect(body).toEqual({ name: 'web2' });
  });
  it('parses backend weights within 1-1000', () => {
    expect(parseBackends('a.internal:80 1000').value).toEqual([{ address: 'a.internal:80', weight: 1000 }]);
    expect(parseBackends('a.internal:80 0').error).toBe('[0] must be an integer 1-1000');
  });
});
