//! Command-line arguments.

pub mod client;

use std::path::PathBuf;

pub const USAGE: &str = "\
tollgate: an OpenAI-compatible LLM API gateway

Usage: tollgate --config FILE [--test] [-u|--upgrade] [-d|--daemon]
       tollgate keys create [--name NAME] [--team T] [--models a,b] [--rpm N] [--tpm N]
                            [--concurrency N] [--budget-usd X --budget-window W]
                            [--tier T] [--regions a,b] [--expires-at TIME]
       tollgate keys list [--team T] | get NAME | revoke NAME | rotate NAME [--grace 1h]
       tollgate teams create --name NAME [--rpm N] [--tpm N] [--concurrency N]
                             [--budget-usd X --budget-window W]
       tollgate teams list | get NAME | delete NAME

  -c, --config FILE  the YAML config (required)
  -t, --test         validate the config and exit (0 = valid)
  -u, --upgrade      take over the listeners of a running instance (graceful upgrade)
  -d, --daemon       run in the background
  -h, --help         this text
  -V, --version      print the version

The keys and teams commands talk to a running gateway's admin API:
  --admin URL            its address (default $TOLLGATE_ADMIN_URL, else http://127.0.0.1:9092)
  --admin-key-file FILE  the admin key (default: $TOLLGATE_ADMIN_KEY)
They print the API's JSON answer; `keys create` and `keys rotate` print the
new secret, which is shown only once. `keys create` without --name names the
key key-<12 random hex digits>.";

/// Parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub config: PathBuf,
    pub test: bool,
    pub upgrade: bool,
    pub daemon: bool,
}

/// What `main` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(Cli),
    /// A `keys` or `teams` command for the admin API.
    Admin(AdminCall),
    Help,
    Version,
}

/// One admin API call made by a `keys`/`teams` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCall {
    /// The admin API's base URL (`http://host:port`).
    pub admin: String,
    /// Where the admin key is read from (`None`: `TOLLGATE_ADMIN_KEY`).
    pub key_file: Option<PathBuf>,
    pub method: &'static str,
    /// The path (percent-encoded) and query.
    pub path: String,
    pub body: Option<serde_json::Value>,
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Parses `keys ...` / `teams ...` (the words after the program name).
fn parse_admin(kind: &str, args: Vec<String>) -> Result<Action, String> {
    let mut it = args.into_iter();
    let verb = it
        .next()
        .ok_or(format!("`{kind}` needs a command: create, list, get, ..."))?;
    let mut admin = std::env::var("TOLLGATE_ADMIN_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:9092".to_string());
    let mut key_file = None;
    let mut positional = Vec::new();
    let mut opts: std::collections::BTreeMap<String, String> = Default::default();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--admin" => admin = it.next().ok_or("--admin needs a URL")?,
            "--admin-key-file" => {
                key_file = Some(PathBuf::from(
                    it.next().ok_or("--admin-key-file needs a file")?,
                ))
            }
            s if s.starts_with("--") => {
                let v = it.next().ok_or(format!("{s} needs a value"))?;
                opts.insert(s[2..].to_string(), v);
            }
            _ => positional.push(a),
        }
    }
    let num = |k: &str| -> Result<Option<serde_json::Value>, String> {
        opts.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map(serde_json::Value::from)
                    .map_err(|_| format!("--{k} must be a whole number"))
            })
            .transpose()
    };
    let list = |k: &str| -> Option<serde_json::Value> {
        opts.get(k).map(|v| {
            serde_json::Value::from(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>(),
            )
        })
    };
    let governance = |body: &mut serde_json::Map<String, serde_json::Value>| -> Result<(), String> {
        let mut limits = serde_json::Map::new();
        for k in ["rpm", "tpm", "concurrency"] {
            if let Some(v) = num(k)? {
                limits.insert(k.into(), v);
            }
        }
        if !limits.is_empty() {
            body.insert("limits".into(), limits.into());
        }
        match (opts.get("budget-usd"), opts.get("budget-tokens")) {
            (None, None) => {}
            (usd, tokens) => {
                let window = opts
                    .get("budget-window")
                    .cloned()
                    .unwrap_or_else(|| "month".into());
                let mut b = serde_json::Map::new();
                if let Some(u) = usd {
                    let f: f64 = u.parse().map_err(|_| "--budget-usd must be a number")?;
                    b.insert("usd".into(), serde_json::Value::from(f));
                }
                if tokens.is_some() {
                    b.insert("tokens".into(), num("budget-tokens")?.unwrap_or_default());
                }
                b.insert("window".into(), window.into());
                body.insert("budgets".into(), serde_json::Value::Array(vec![b.into()]));
            }
        }
        for k in ["tier"] {
            if let Some(v) = opts.get(k) {
                body.insert(k.into(), v.clone().into());
            }
        }
        if let Some(r) = list("regions") {
            body.insert("regions".into(), r);
        }
        Ok(())
    };
    let one = |what: &str| -> Result<String, String> {
        match positional.as_slice() {
            [n] => Ok(n.clone()),
            _ => Err(format!("`{kind} {what}` needs exactly one NAME")),
        }
    };
    let base = if kind == "keys" {
        "/admin/keys"
    } else {
        "/admin/teams"
    };
    // Every option must mean something to this command: a misspelt
    // `--modles` must not create a key that may use every model.
    const GOVERNANCE: &[&str] = &[
        "rpm",
        "tpm",
        "concurrency",
        "budget-usd",
        "budget-tokens",
        "budget-window",
        "tier",
        "regions",
    ];
    let known: Vec<&str> = match (kind, verb.as_str()) {
        ("keys", "create") => [&["name", "team", "models", "expires-at"][..], GOVERNANCE].concat(),
        ("teams", "create") => [&["name"][..], GOVERNANCE].concat(),
        ("keys", "list") => vec!["team"],
        ("keys", "rotate") => vec!["grace"],
        _ => Vec::new(),
    };
    if let Some(bad) = opts.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("`{kind} {verb}` has no option --{bad}"));
    }
    let (method, path, body) = match verb.as_str() {
        "list" => {
            let mut q = String::from("?limit=1000");
            if let Some(t) = opts.get("team") {
                q.push_str(&format!("&team={}", enc(t)));
            }
            ("GET", format!("{base}{q}"), None)
        }
        "get" => ("GET", format!("{base}/{}", enc(&one("get")?)), None),
        "revoke" if kind == "keys" => (
            "POST",
            format!("{base}/{}/revoke", enc(&one("revoke")?)),
            None,
        ),
        "rotate" if kind == "keys" => {
            let mut b = serde_json::Map::new();
            if let Some(g) = opts.get("grace") {
                b.insert("grace".into(), g.clone().into());
            }
            (
                "POST",
                format!("{base}/{}/rotate", enc(&one("rotate")?)),
                Some(b.into()),
            )
        }
        "delete" if kind == "teams" => ("DELETE", format!("{base}/{}", enc(&one("delete")?)), None),
        "create" => {
            let name = opts
                .get("name")
                .cloned()
                .or_else(|| positional.first().cloned());
            let name = match name {
                Some(n) => n,
                // `keys create --team T --models a,b`: a fresh name.
                None if kind == "keys" => crate::keystore::new_key_name()?,
                None => return Err(format!("`{kind} create` needs --name NAME")),
            };
            let mut b = serde_json::Map::new();
            b.insert("name".into(), name.into());
            if kind == "keys" {
                if let Some(t) = opts.get("team") {
                    b.insert("team".into(), t.clone().into());
                }
                if let Some(m) = list("models") {
                    b.insert("models".into(), m);
                }
                if let Some(e) = opts.get("expires-at") {
                    b.insert("expires_at".into(), e.clone().into());
                }
            }
            governance(&mut b)?;
            ("POST", base.to_string(), Some(b.into()))
        }
        other => return Err(format!("unknown `{kind}` command `{other}`")),
    };
    Ok(Action::Admin(AdminCall {
        admin: admin.trim_end_matches('/').to_string(),
        key_file,
        method,
        path,
        body,
    }))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Action, String> {
    let mut config = None;
    let (mut test, mut upgrade, mut daemon) = (false, false, false);
    let args: Vec<String> = args.into_iter().collect();
    if let Some(kind @ ("keys" | "teams")) = args.first().map(String::as_str) {
        let kind = kind.to_string();
        return parse_admin(&kind, args.into_iter().skip(1).collect());
    }
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--config" => {
                config = Some(it.next().ok_or("--config needs a file path")?);
            }
            s if s.starts_with("--config=") => config = Some(s["--config=".len()..].to_string()),
            "-t" | "--test" => test = true,
            "-u" | "--upgrade" => upgrade = true,
            "-d" | "--daemon" => daemon = true,
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    Ok(Action::Run(Cli {
        config: PathBuf::from(config),
        test,
        upgrade,
        daemon,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_flags() {
        assert_eq!(
            parse(args("--config a.yaml --test -u")),
            Ok(Action::Run(Cli {
                config: "a.yaml".into(),
                test: true,
                upgrade: true,
                daemon: false
            }))
        );
        assert!(parse(args("--test")).is_err());
        assert!(parse(args("--config")).is_err());
        assert!(parse(args("-c x --bogus")).is_err());
        assert_eq!(parse(args("-h")), Ok(Action::Help));
    }

    #[test]
    fn parses_key_commands() {
        let Ok(Action::Admin(c)) = parse(args(
            "keys create --name a/b --team T --models x,y --rpm 5 --admin http://h:1/",
        )) else {
            panic!()
        };
        assert_eq!(
            (c.method, c.path.as_str(), c.admin.as_str()),
            ("POST", "/admin/keys", "http://h:1")
        );
        let body = c.body.unwrap();
        assert_eq!(body["name"], "a/b");
        assert_eq!(body["models"], serde_json::json!(["x", "y"]));
        assert_eq!(body["limits"]["rpm"], 5);
        let Ok(Action::Admin(c)) = parse(args("keys revoke a/b")) else {
            panic!()
        };
        assert_eq!(
            (c.method, c.path.as_str()),
            ("POST", "/admin/keys/a%2Fb/revoke")
        );
        assert!(parse(args("keys revoke")).is_err());
        assert!(parse(args("keys explode x")).is_err());
        assert!(parse(args("keys create --rpm many --name a")).is_err());
        // The issue's own example: no name, one is made up.
        let Ok(Action::Admin(c)) = parse(args("keys create --team T --models a,b")) else {
            panic!()
        };
        let body = c.body.unwrap();
        let name = body["name"].as_str().unwrap();
        assert!(name.starts_with("key-") && name.len() == 16, "{name}");
        assert_eq!(body["team"], "T");
        // A misspelt or misplaced option is refused, not ignored.
        for bad in [
            "keys create --name a --modles x",
            "keys revoke a --grace 1h",
            "keys list --limit 5",
            "teams create --name t --models x",
        ] {
            let e = parse(args(bad)).unwrap_err();
            assert!(e.contains("has no option --"), "{bad}: {e}");
        }
        assert!(parse(args("keys rotate a --grace 1h")).is_ok());
        assert!(parse(args("keys list --team t")).is_ok());
    }
}
