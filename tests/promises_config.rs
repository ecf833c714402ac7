#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shipped and documented configs pass `tollgate --test` (issue 24):
//! `conf/demo.yaml`; `conf/tollgate.yaml` with the variables
//! `systemd/tollgate.env.example` lists; the complete annotated example in
//! docs/config.md with exactly the variables that page names; and the
//! README's example. The YAML is read from the documents themselves, so a
//! doc that drifts from the code fails here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `tollgate --config FILE --test` with only `env` in its environment.
fn test_config(file: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("--config")
        .arg(file)
        .arg("--test")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run tollgate --test")
}

#[track_caller]
fn assert_valid(file: &Path, env: &[(&str, &str)]) {
    let out = test_config(file, env);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} is not valid:\n{stderr}",
        file.display()
    );
    assert_eq!(
        stdout,
        format!("configuration {} is valid\n", file.display())
    );
}

/// Asserts that `file` fails `--test` (exit 1) with `env`, naming `var`.
#[track_caller]
fn assert_needs(file: &Path, env: &[(&str, &str)], var: &str) {
    let out = test_config(file, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "valid without {var}: {stderr}");
    assert!(stderr.starts_with("invalid configuration:"), "{stderr}");
    assert!(
        stderr.contains(var),
        "the error does not name {var}: {stderr}"
    );
}

/// The first fenced `yaml` block after the line `heading` in `doc`.
fn yaml_block_after(doc: &str, heading: &str) -> String {
    let after = doc
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no `{heading}` heading"))
        .1;
    let start = after.find("```yaml\n").expect("a ```yaml block") + "```yaml\n".len();
    let len = after[start..].find("\n```").expect("the block's end");
    after[start..start + len + 1].to_string()
}

/// A dummy value for a variable (8+ characters, as keys need).
fn dummy(var: &str) -> String {
    format!("dummy-{}", var.to_ascii_lowercase())
}

#[test]
fn demo_config_is_valid_with_an_empty_environment() {
    assert_valid(&repo("conf/demo.yaml"), &[]);
}

#[test]
fn tollgate_yaml_is_valid_with_the_variables_of_the_env_example() {
    // The shipped environment file lists what the shipped config needs.
    let vars: Vec<String> = read("systemd/tollgate.env.example")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty())
        .collect();
    assert!(!vars.is_empty());
    let values: Vec<(String, String)> = vars.iter().map(|v| (v.clone(), dummy(v))).collect();
    let env: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let file = repo("conf/tollgate.yaml");
    assert_valid(&file, &env);
    for skip in &vars {
        let fewer: Vec<(&str, &str)> = env.iter().copied().filter(|(k, _)| k != skip).collect();
        assert_needs(&file, &fewer, skip);
    }
}

#[test]
fn the_complete_example_in_docs_config_md_is_valid_with_the_variables_it_names() {
    let doc = read("docs/config.md");
    let yaml = yaml_block_after(&doc, "## Complete annotated example");
    // "It passes `--test` once `OPENAI_API_KEY`, `DEEPSEEK_API_KEY` and
    // `TEAM_A_KEY` are set": those, and no others.
    let sentence = doc
        .split_once("## Complete annotated example")
        .unwrap()
        .1
        .split("```yaml")
        .next()
        .unwrap();
    let named: Vec<&str> = sentence
        .split('`')
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .collect();
    assert_eq!(named, ["OPENAI_API_KEY", "DEEPSEEK_API_KEY", "TEAM_A_KEY"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let values: Vec<(&str, String)> = named.iter().map(|v| (*v, dummy(v))).collect();
    let env: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_valid(&file, &env);
    for skip in &named {
        let fewer: Vec<(&str, &str)> = env.iter().copied().filter(|(k, _)| k != skip).collect();
        assert_needs(&file, &fewer, skip);
    }
}

#[test]
fn the_readme_example_is_valid() {
    let yaml = yaml_block_after(&read("README.md"), "## Configuration");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let env = [
        ("OPENAI_API_KEY", "dummy-openai-key"),
        ("TEAM_A_KEY", "dummy-team-a-key"),
    ];
    assert_valid(&file, &env);
}
