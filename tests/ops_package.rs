#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Debian package's sources and the README's first command (issue 21),
//! checked without root: the packaged unit stays the shared unit but for
//! the binary's path and the static user; every file `cargo deb` is told to
//! ship exists; the maintainer scripts parse and carry cargo-deb's
//! `#DEBHELPER#`; `scripts/deps.sh` (the README's first command) calls
//! apt-get directly as root, through sudo as a user, and neither when
//! nothing is missing; and `tests/package.sh` skips cleanly when not root.
//! The package itself is built, installed and purged by tests/package.sh
//! (as root, from .ci/run).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A unit's directive lines, comments and blank lines left out.
fn directives(unit: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

#[test]
fn packaged_unit_is_the_shared_unit_with_usr_bin_and_a_static_user() {
    let shared = directives(&read("systemd/tollgate.service"));
    let packaged = directives(&read("debian/tollgate.service"));
    let expected: Vec<String> = shared
        .iter()
        .filter(|l| *l != "DynamicUser=yes")
        .map(|l| {
            l.replace(
                "ExecStart=/usr/local/bin/tollgate ",
                "ExecStart=/usr/bin/tollgate ",
            )
        })
        .collect();
    assert_eq!(
        packaged, expected,
        "debian/tollgate.service drifted from systemd/tollgate.service"
    );
    assert!(shared.contains(&"DynamicUser=yes".to_string()));
    assert!(packaged.contains(&"User=tollgate".to_string()));
    assert!(packaged.contains(&"StateDirectory=tollgate".to_string()));
}

/// The `[package.metadata.deb]` table of Cargo.toml, as text.
fn deb_metadata() -> String {
    let toml = read("Cargo.toml");
    let start = toml
        .find("[package.metadata.deb]")
        .expect("Cargo.toml has [package.metadata.deb]");
    let rest = &toml[start + 1..];
    let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}

#[test]
fn every_file_the_package_ships_exists() {
    let meta = deb_metadata();
    let assets: Vec<(String, String, String)> = meta
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[\""))
        .map(|l| {
            let parts: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            assert_eq!(parts.len(), 3, "asset line {l}");
            (parts[0].into(), parts[1].into(), parts[2].into())
        })
        .collect();
    assert!(assets.len() >= 9, "{assets:?}");
    for (src, dest, mode) in &assets {
        assert!(mode == "644" || mode == "755", "{src}: mode {mode}");
        if src == "target/release/tollgate" {
            assert_eq!(dest, "usr/bin/");
            continue;
        }
        match src.strip_suffix("/*.md") {
            Some(dir) => {
                let n = std::fs::read_dir(repo(dir))
                    .unwrap()
                    .filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .path()
                            .extension()
                            .is_some_and(|x| x == "md")
                    })
                    .count();
                assert!(n > 0, "{src} matches nothing");
            }
            None => assert!(repo(src).is_file(), "{src} does not exist"),
        }
    }
    let dests: Vec<&str> = assets.iter().map(|a| a.1.as_str()).collect();
    assert!(dests.contains(&"etc/tollgate/tollgate.yaml"), "{dests:?}");
    assert!(meta.contains("enable = false"), "{meta}");
    assert!(meta.contains("start = false"), "{meta}");
    assert!(meta.contains("unit-scripts = \"debian/\""), "{meta}");
}

#[test]
fn maintainer_scripts_parse_are_executable_and_carry_debhelper() {
    for script in ["debian/postinst", "debian/postrm"] {
        let path = repo(script);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
        let text = read(script);
        assert!(text.starts_with("#!/bin/sh\n"), "{script}");
        assert!(text.contains("\nset -e\n"), "{script}");
        assert_eq!(text.matches("#DEBHELPER#").count(), 1, "{script}");
        let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What postinst runs (its message to the admin left out) starts and
    // enables nothing; tests/package.sh checks the installed result.
    let postinst = read("debian/postinst");
    let (before, rest) = postinst.split_once("<<'MSG'\n").unwrap();
    let after = rest.split_once("\nMSG\n").unwrap().1;
    for never in ["systemctl", "deb-systemd-invoke", "service "] {
        assert!(
            !before.contains(never) && !after.contains(never),
            "postinst runs `{never}`"
        );
    }
}

// ---------------------------------------------------------------------------
// scripts/deps.sh, against stand-ins for id, sudo, apt-get and dpkg-query
// ---------------------------------------------------------------------------

struct Stubs {
    dir: tempfile::TempDir,
}

impl Stubs {
    /// A PATH of stand-ins: `id -u` prints `uid`; `dpkg-query` says every
    /// package is installed when `installed`, none otherwise; `apt-get`
    /// and (when `sudo`) `sudo` log their arguments to `calls`, and sudo
    /// then runs them; `cc` and `python3` succeed. Nothing else is on it
    /// but `sh`, `env`, `chmod` and `rm`.
    fn new(uid: u32, installed: bool, sudo: bool) -> Stubs {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let calls = dir.path().join("calls");
        let write = |name: &str, body: &str| {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write("id", &format!("echo {uid}"));
        let status = if installed {
            "install ok installed"
        } else {
            ""
        };
        write("dpkg-query", &format!("printf '%s' '{status}'"));
        write(
            "apt-get",
            &format!("echo \"apt-get $*\" >>'{}'", calls.display()),
        );
        if sudo {
            write(
                "sudo",
                &format!("echo \"sudo $*\" >>'{}'\nexec \"$@\"", calls.display()),
            );
        }
        write("cc", "exit 0");
        write("python3", "exit 0");
        for tool in ["sh", "env", "chmod", "rm"] {
            let real = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap();
            std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
        }
        Stubs { dir }
    }

    fn run(&self, args: &[&str], policy_exists: bool) -> (Output, String) {
        let policy = self.dir.path().join("policy-rc.d");
        if policy_exists {
            std::fs::write(&policy, "#!/bin/sh\n# the machine's own\nexit 101\n").unwrap();
        }
        let out = Command::new("/bin/sh")
            .arg(repo("scripts/deps.sh"))
            .args(args)
            .env_clear()
            .env("PATH", self.dir.path().join("bin"))
            .env("POLICY_RC_D", &policy)
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default();
        (out, calls)
    }

    fn policy(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("policy-rc.d")).ok()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn deps_script_as_root_calls_apt_get_itself_without_sudo() {
    let stubs = Stubs::new(0, false, true);
    let (out, calls) = stubs.run(&[], false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        calls,
        "apt-get update\napt-get install -y --no-install-recommends cmake\n"
    );
    // It made a policy that keeps services from starting, and removed it.
    assert_eq!(stubs.policy(), None);
}

#[test]
fn deps_script_as_a_user_goes_through_sudo() {
    let stubs = Stubs::new(1000, false, true);
    let (out, calls) = stubs.run(&["--tests"], true);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines,
        [
            "sudo env DEBIAN_FRONTEND=noninteractive apt-get update",
            "apt-get update",
            // No `node` or `npm` on the stand-ins' PATH: Debian's are wanted.
            "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake redis-server prometheus curl postgresql chromium nodejs npm",
            "apt-get install -y --no-install-recommends cmake redis-server prometheus curl postgresql chromium nodejs npm",
        ]
    );
    // The machine's own policy stays as it was.
    assert_eq!(
        stubs.policy().unwrap(),
        "#!/bin/sh\n# the machine's own\nexit 101\n"
    );
}

#[test]
fn deps_script_as_a_user_without_sudo_says_what_to_do_and_installs_nothing() {
    let stubs = Stubs::new(1000, false, false);
    let (out, calls) = stubs.run(&["--ci"], false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run this as root or install sudo"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("nginx wrk systemd"),
        "{}",
        stderr(&out)
    );
    assert_eq!(calls, "");
    assert_eq!(stubs.policy(), None);
}

#[test]
fn deps_script_with_everything_installed_needs_neither_root_nor_sudo() {
    let stubs = Stubs::new(1000, true, false);
    let (out, calls) = stubs.run(&["--ci"], false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all present"));
    assert_eq!(calls, "");
    let (out, _) = stubs.run(&["--everything"], false);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn readme_first_command_is_the_deps_script_not_sudo() {
    let readme = read("README.md");
    let section = readme
        .split_once("## The two commands")
        .unwrap()
        .1
        .split("\n## ")
        .next()
        .unwrap();
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().trim())
        .collect();
    assert_eq!(blocks.len(), 2, "{section}");
    assert!(
        blocks[0].starts_with(
            "sh scripts/deps.sh && cargo run --release --locked -- --config conf/demo.yaml"
        ),
        "{}",
        blocks[0]
    );
    assert!(
        blocks[1].starts_with("sh scripts/deps.sh --tests && bash tests/run.sh"),
        "{}",
        blocks[1]
    );
    for b in blocks {
        assert!(!b.contains("sudo"), "{b}");
    }
}

#[test]
fn package_test_skips_with_a_message_when_not_root() {
    let script = repo("tests/package.sh");
    let out = if is_root() {
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "bash",
            ])
            .arg(&script)
            .output()
            .unwrap()
    } else {
        Command::new("bash").arg(&script).output().unwrap()
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("SKIPPED: tests/package.sh"), "{stdout}");
}

/// Whether this test runs as root (then it can become `nobody`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}
