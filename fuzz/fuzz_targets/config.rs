//! Config loading (`config::parse_str`, the public entry point, whatever
//! order `${VAR}` expansion and YAML parsing run in) on any text and any
//! environment: never panics and never hangs. The input is
//! `NAME=VALUE` lines, a NUL byte, then the YAML.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (env, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let vars: HashMap<String, String> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = tollgate::config::parse_str(
        text,
        |k| vars.get(k).cloned(),
        Path::new("/nonexistent/tollgate-fuzz"),
    );
});
