//! Shared by the cross-process tests of the `switchboard` binary: start it, wait for a `listening` line, kill it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `switchboard` process, killed (by its own handle) when dropped.
pub struct Server {
    pub child: Child,
    /// The address of the `listening <what> ADDR` line waited for.
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

/// Runs `switchboard ARGS` (with `RUST_LOG=warn` and `env`) and waits for its `listening <what> ADDR` line.
pub fn start(args: &[&str], env: &[(&str, &str)], what: &str) -> Server {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn switchboard");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let prefix = format!("listening {what} ");
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read stdout");
        if let Some(a) = line.strip_prefix(&prefix) {
            break a.trim().to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// `switchboard serve` on loopback with free ports, no TURN, plus `args` and `env`; waits for `listening http`.
#[allow(dead_code)] // not every test file starts `serve`
pub fn serve(env: &[(&str, &str)], args: &[&str]) -> Server {
    let mut all = vec![
        "serve",
        "--http",
        "127.0.0.1:0",
        "--no-turn",
        "--sfu-port",
        "0",
    ];
    all.extend_from_slice(args);
    start(&all, env, "http")
}
