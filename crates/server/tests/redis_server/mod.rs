//! A real `redis-server` for a test: started on a free port with its own
//! directory and AOF, killed with SIGKILL (a crash) and restarted on the
//! same directory when a test says so, killed and removed on drop.
//!
//! Missing `redis-server` fails the test with what to install: CI installs
//! it (scripts/test), so a skip would hide a broken setup.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a start (or a restart that replays the AOF) may take.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Between two readiness probes while waiting for a start.
const POLL: Duration = Duration::from_millis(10);

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// The configuration the durability promise needs: AOF fsynced on
    /// every write, no snapshots.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`], with settings added after the defaults
    /// (a later setting wins, e.g. `["--appendfsync", "everysec"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A free port can be taken by someone else before redis binds it:
        // try a few.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last = err,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for checks made by the test itself.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGKILL: no shutdown, no last fsync; only what was fsynced is left.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(err) = self.spawn() {
            panic!("redis-server did not restart: {err}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed (not on PATH): these tests need a real one. \
                 Install it with `apt-get install redis-server` (scripts/test does)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited ({status}): {stderr}{log}"));
            }
            if ready(self.port, &self.dir) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not ready within {START_DEADLINE:?}"));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Our server (its directory is `dir`: not another test's that took the
/// port) answers commands with its data loaded (PING answers while the AOF
/// is still being replayed; DBSIZE does not).
fn ready(port: u16, dir: &std::path::Path) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
        return false;
    };
    let ours = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query::<Vec<String>>(&mut conn)
        .is_ok_and(|got| got.get(1).map(PathBuf::from) == dir.canonicalize().ok());
    ours && redis::cmd("DBSIZE").query::<u64>(&mut conn).is_ok()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port()
}
