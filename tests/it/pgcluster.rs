//! A private PostgreSQL cluster for one test: `initdb` into a temporary
//! directory and `pg_ctl` on a free loopback port, run as the `postgres`
//! user when the test runs as root (the server refuses root). It can be
//! stopped and started again: a real database restart.

use std::path::PathBuf;
use std::process::Command;

pub struct PgCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    sockets: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

/// Debian keeps the server tools under /usr/lib/postgresql/<version>/bin.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL's server tools (initdb, pg_ctl) are installed")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn as_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        // the server user must reach its data and socket directories
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let cluster = PgCluster {
            data: dir.path().join("data"),
            sockets: dir.path().to_owned(),
            bin: bin_dir(),
            port: free_port(),
            _dir: dir,
        };
        cluster.pg(&[
            "initdb",
            "-D",
            cluster.data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]);
        cluster.start_again();
        cluster
    }

    fn pg(&self, args: &[&str]) {
        let tool = self.bin.join(args[0]);
        let mut cmd = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        let out = cmd.args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.sockets.display()
        );
        self.pg(&[
            "pg_ctl",
            "-D",
            self.data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            self.data.join("server.log").to_str().unwrap(),
            "-w",
            "start",
        ]);
    }

    /// A fast shutdown: every session is ended.
    pub fn stop(&self) {
        self.pg(&[
            "pg_ctl",
            "-D",
            self.data.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let tool = self.bin.join("pg_ctl");
        let mut cmd = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        // Already stopped is fine; this only makes sure nothing is left running.
        let _ = cmd
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}
