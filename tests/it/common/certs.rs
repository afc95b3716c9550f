//! Certificates made with `openssl` for the TLS tests: a CA, a server
//! certificate for 127.0.0.1 (and `model.internal`), a client certificate,
//! and a second CA that signed nothing.

use std::path::PathBuf;
use std::process::Command;

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sh = |script: &str| {
            let out = Command::new("bash")
                .arg("-ec")
                .arg(script)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(&format!(
            "openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=inferwatch-test-ca"
        ));
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            sh(&format!(
                "openssl req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}\n\
                 printf 'subjectAltName=IP:127.0.0.1,DNS:model.internal\\nbasicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage={usage}\\n' > {name}.ext\n\
                 openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"
            ));
        }
        // A second CA that signed nothing here.
        sh(&format!(
            "openssl req -x509 {ec} -keyout other.key -out other-ca.pem -days 2 -subj /CN=other-ca"
        ));
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}
