//! Command-line arguments.

use std::path::PathBuf;

pub const USAGE: &str = "\
tollgate: an OpenAI-compatible LLM API gateway

Usage: tollgate --config FILE [--test] [-u|--upgrade] [-d|--daemon]

  -c, --config FILE  the YAML config (required)
  -t, --test         validate the config and exit (0 = valid)
  -u, --upgrade      take over the listeners of a running instance (graceful upgrade)
  -d, --daemon       run in the background
  -h, --help         this text
  -V, --version      print the version";

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
    Help,
    Version,
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Action, String> {
    let mut config = None;
    let (mut test, mut upgrade, mut daemon) = (false, false, false);
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
}
