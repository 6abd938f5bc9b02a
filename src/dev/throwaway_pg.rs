//! Dev tool: a throw-away PostgreSQL from the installed binaries (Debian's `postgresql`, which
//! `scripts/install-deps.sh` installs), for the benchmark's cluster runs and the cluster tests: `initdb` in
//! a folder of its own,
//! trust authentication on 127.0.0.1 only, user `lienthong`. PostgreSQL refuses to run as root, so as root
//! it runs as `nobody`, who then owns the folder. Stopped (immediate) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A PostgreSQL tool (`initdb`, `pg_ctl`): on `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let path = e.path().join("bin").join(name);
            path.is_file().then_some((version, path))
        })
        .collect();
    debian.sort();
    on_path
        .or_else(|| debian.pop().map(|(_, p)| p))
        .ok_or_else(|| format!("`{name}` (PostgreSQL) is not installed: run scripts/install-deps.sh"))
}

/// A running throw-away PostgreSQL.
pub struct ThrowawayPostgres {
    dir: PathBuf,
    port: u16,
    as_nobody: bool,
}

impl ThrowawayPostgres {
    /// `initdb` in `dir` (created if missing, else empty; its parents must let `nobody` through when
    /// running as root) and start the server on `port`.
    pub fn start(dir: &Path, port: u16) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let as_nobody = running_as_root();
        if as_nobody {
            let owned = Command::new("chown")
                .arg("nobody")
                .arg(dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !owned.success() {
                return Err(format!("chown nobody {}: {owned}", dir.display()));
            }
        }
        let pg = Self {
            dir: dir.to_path_buf(),
            port,
            as_nobody,
        };
        let data = pg.data_dir();
        let data = data.to_string_lossy();
        pg.run(
            "initdb",
            // `--no-sync`: initdb's own files only; the server still syncs every commit.
            &[
                "-D",
                &data,
                "-U",
                "lienthong",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    /// Start the server (again, after [`ThrowawayPostgres::stop_server`]) and wait until it accepts
    /// connections.
    pub fn start_server(&self) -> Result<(), String> {
        let data = self.data_dir();
        let data = data.to_string_lossy();
        let (dir, port) = (&self.dir, self.port);
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.display()
        );
        let log = dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-w",
                "-t",
                "60",
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "start",
            ],
        )
        .map_err(|e| {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\n{server_log}")
        })?;
        Ok(())
    }

    /// Stop the server (fast shutdown: sessions are ended, committed work is kept).
    pub fn stop_server(&self) -> Result<(), String> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-w", "-m", "fast", "stop"],
        )
        .map(|_| ())
    }

    /// The connection URL (no password: trust on loopback).
    pub fn url(&self) -> String {
        format!("postgres://lienthong@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, name: &str, args: &[&str]) -> Result<Output, String> {
        let program = tool(name)?;
        let mut command = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        match out.status.success() {
            true => Ok(out),
            false => Err(format!(
                "{name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-m", "immediate", "stop"],
        );
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
