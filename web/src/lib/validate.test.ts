import { cidr, hostOrIp, hostPattern, hostPort, isFqdn, isIp, name, port, eachItem, splitList } from './validate';

// The same cases the manager's validators accept and refuse (src/manager/api/validate.cc).
describe('client validation mirrors the server', () => {
  it('ports and ranges', () => {
    expect(port('443')).toBeUndefined();
    expect(port('8000-8100')).toBeUndefined();
    expect(port('0')).toBe('port 0 is outside 1-65535');
    expect(port('65536')).toBe('port 65536 is outside 1-65535');
    expect(port('90-70')).toBe('range 90-70 has its low end above its high end');
    expect(port('http')).toBe('"http" is not a port number');
  });
  it('CIDRs', () => {
    expect(cidr('10.0.0.0/8')).toBeUndefined();
    expect(cidr('2001:db8::/32')).toBeUndefined();
    expect(cidr('10.0.0.0/33')).toBe('prefix length must be 0-32');
    expect(cidr('10.0.0.0')).toBe('expected address/prefix');
    expect(cidr('10.0.0.256/8')).toBe('"10.0.0.256" is not an IP address');
  });
  it('host names and addresses', () => {
    expect(isFqdn('web.internal')).toBe(true);
    expect(isFqdn('1.2.3.999')).toBe(false);
    expect(isFqdn('-bad.example')).toBe(false);
    expect(isIp('::1')).toBe(true);
    expect(isIp('fe80::1:2')).toBe(true);
    expect(isIp('1:2:3:4:5:6:7:8:9')).toBe(false);
    expect(hostOrIp('10.1.0.0/16')).toBeUndefined();
    expect(hostOrIp('bad_host')).toBe('"bad_host" is neither an IP address, a CIDR nor a host name');
    expect(hostPattern('*.example.com')).toBeUndefined();
    expect(hostPattern('a.*.example.com')).toBeDefined();
  });
  it('host:port', () => {
    expect(hostPort('10.0.0.5:514')).toBeUndefined();
    expect(hostPort('[::1]:8080')).toBeUndefined();
    expect(hostPort('web:0')).toBe('port must be 1-65535');
    expect(hostPort('web')).toBe('expected host:port');
  });
  it('names', () => {
    expect(name('prod-1.eu')).toBeUndefined();
    expect(name('')).toBe('must not be empty');
    expect(name('-x')).toBe('must start with a letter or digit');
    expect(name('a b')).toBe("may contain only letters, digits, '.', '_' and '-'");
  });
  it('lists name the bad item like the server', () => {
    expect(eachItem(splitList('80, 443 99999'), port)).toBe('[2] port 99999 is outside 1-65535');
  });
});
