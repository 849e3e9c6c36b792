//! The project's scripts answer `--help` with their usage and refuse
//! unknown options, instead of starting a 10-minute run (with apt-get) that
//! the newcomer only wanted to read about.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A PATH holding only what printing a usage needs. Should a script's
/// option handling break, it then fails at its first other command instead
/// of building, installing packages or running the suite.
fn bare_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-scripts-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for tool in ["bash", "dirname", "cat", "sed"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found in /usr/bin or /bin"));
        let _ = std::os::unix::fs::symlink(found, dir.join(tool));
    }
    dir
}

fn run(script: &str, arg: &str, path: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(root().join(script))
        .arg(arg)
        .env("PATH", path)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn scripts_print_usage_for_help_and_refuse_unknown_options() {
    let path = bare_path();
    for script in [
        "scripts/test",
        "scripts/test-web",
        "scripts/test-deploy",
        "scripts/fuzz",
        "scripts/autobahn",
        "scripts/cluster",
        "bench/run.sh",
        "bench/cluster.sh",
        "bench/everyday.sh",
    ] {
        for help in ["--help", "-h"] {
            let (code, stdout, stderr) = run(script, help, &path);
            assert_eq!(code, Some(0), "{script} {help}: {stderr}");
            assert!(
                stdout.contains(script.rsplit('/').next().unwrap_or(script)),
                "{script} {help} printed no usage naming itself:\n{stdout}"
            );
        }
        let (code, _, stderr) = run(script, "--no-such-option", &path);
        assert_eq!(code, Some(2), "{script} --no-such-option: {stderr}");
        assert!(
            stderr.contains("--no-such-option"),
            "{script} does not name the bad option: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&path);
}
