"""Test PKI made with the `openssl` CLI (no Python crypto libraries): a CA, server and client
certificates (EC P-256/P-384 or RSA), an expired one, revocation and a CRL. Used by test_tls_*.py.

    pki = Pki(tmpdir)                     # a fresh CA under tmpdir/<name>
    cert, key = pki.issue("a.example.com", sans=["DNS:a.example.com"])
    pki.revoke(cert); crl = pki.crl()
"""
import os
import subprocess

OPENSSL = "openssl"

_CA_CONF = """
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/issued
serial = {dir}/serial
crlnumber = {dir}/crlnumber
certificate = {dir}/ca.pem
private_key = {dir}/ca.key
default_md = sha256
default_days = 30
default_crl_days = 30
policy = anything
unique_subject = no
copy_extensions = none
[ anything ]
commonName = supplied
organizationName = optional
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
"""


def run(*args, cwd=None):
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def _key_args(kind):
    if kind == "rsa":
        return ["-newkey", "rsa:2048"]
    curve = {"p256": "P-256", "p384": "P-384"}[kind]
    return ["-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}"]


class Pki:
    def __init__(self, base, name="ca", key="p256"):
        self.dir = os.path.join(base, name)
        os.makedirs(os.path.join(self.dir, "issued"), exist_ok=True)
        open(os.path.join(self.dir, "index.txt"), "w").close()
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(self.dir, "crlnumber"), "w") as f:
            f.write("1000\n")
        self.conf = os.path.join(self.dir, "ca.cnf")
        with open(self.conf, "w") as f:
            f.write(_CA_CONF.format(dir=self.dir))
        self.cert = os.path.join(self.dir, "ca.pem")
        self.key = os.path.join(self.dir, "ca.key")
        run("req", "-x509", *_key_args(key), "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "30",
            "-subj", f"/CN=MarchProxy test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-config", self.conf)
        self.count = 0

    def issue(self, cn, sans=(), key="p256", client=False, start=None, end=None, out_dir=None):
        """Issues a certificate; returns (cert_path, key_path). start/end: YYMMDDHHMMSSZ."""
        self.count += 1
        out_dir = out_dir or self.dir
        stem = os.path.join(out_dir, f"{self.count:02d}-{cn.replace('*', 'star').replace('/', '_')}")
        key_path, csr, cert_path, ext = stem + ".key", stem + ".csr", stem + ".pem", stem + ".ext"
        run("req", "-new", *_key_args(key), "-nodes", "-keyout", key_path, "-out", csr, "-subj", f"/CN={cn}",
            "-config", self.conf)
        with open(ext, "w") as f:
            f.write("[ ext ]\nbasicConstraints = CA:FALSE\n")
            f.write(f"extendedKeyUsage = {'clientAuth' if client else 'serverAuth'}\n")
            if sans:
                f.write("subjectAltName = " + ",".join(sans) + "\n")
        args = ["ca", "-batch", "-config", self.conf, "-in", csr, "-out", cert_path, "-extfile", ext,
                "-extensions", "ext", "-notext"]
        if start:
            args += ["-startdate", start]
        if end:
            args += ["-enddate", end]
        run(*args)
        return cert_path, key_path

    def revoke(self, cert_path):
        run("ca", "-batch", "-config", self.conf, "-revoke", cert_path)

    def crl(self, path=None):
        path = path or os.path.join(self.dir, "ca.crl")
        run("ca", "-batch", "-config", self.conf, "-gencrl", "-out", path)
        return path


def fingerprint(pem_path):
    """SHA-256 fingerprint of a certificate file, as `openssl x509 -fingerprint` prints it."""
    out = run("x509", "-in", pem_path, "-noout", "-fingerprint", "-sha256")
    return out.strip().split("=", 1)[1].replace(":", "").lower()
