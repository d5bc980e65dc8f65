//! Typed command-line configuration for `mic` and `nmi`.
//!
//! Every flag of the Go original keeps its name and default (users' charts pass them today),
//! and each has an environment variable equivalent. Durations are typed: Go-style values such
//! as `15s`, `3m` or `1h0m0s` where the original took a Go duration, and plain seconds (or a
//! value with a unit) where it took an integer number of seconds. A bad value is refused by
//! clap with the flag's name and the expected form, and exit code 2.

pub mod compat;
pub mod mic;
pub mod nmi;

use clap::{Args, ValueEnum};
use std::time::Duration;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logging flags shared by every long-running subcommand.
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log format: text or json.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,aad_pod_identity::actors=debug`.
    #[arg(long = "log-level", env = "RUST_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log_filter: String,

    /// klog's flags, as the original takes them.
    #[command(flatten)]
    pub klog: compat::KlogArgs,
}

impl LogArgs {
    /// Text logs at `filter`, with no klog flags given.
    #[must_use]
    pub fn text(filter: String) -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: filter,
            klog: compat::KlogArgs::default(),
        }
    }

    /// The filter in force: `--log-level`, raised by klog's `-v` when left at `info`.
    #[must_use]
    pub fn effective_filter(&self) -> String {
        self.klog.filter_for(&self.log_filter)
    }
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("expected a RUST_LOG-style filter such as `info` or `warn,aad_pod_identity=debug`: {e}"))
}

/// Parses a Go-style duration (`15s`, `3m`, `1h0m0s`, `300ms`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|_| {
        format!("expected a duration with a unit such as 15s, 3m, 1h0m0s or 300ms, got {s:?}")
    })
}

/// Parses a number of seconds as the original's integer flags take them (`60`), also accepting
/// a value with a unit (`60s`, `1m`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(t).map_err(|_| {
        format!("expected a whole number of seconds such as 60 (or a duration such as 60s or 1m), got {s:?}")
    })
}

/// A comma-separated list flag (`a,b,c`; `""` is the empty list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvList(pub Vec<String>);

impl CsvList {
    /// The items.
    #[must_use]
    pub fn items(&self) -> &[String] {
        &self.0
    }
}

/// Parses a comma-separated list, ignoring empty items.
pub fn parse_list(s: &str) -> Result<CsvList, String> {
    Ok(CsvList(
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

/// Parses a port number that must not be 0.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "expected a TCP port number from 1 to 65535, got {s:?}"
        )),
        Ok(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("3600s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("15").unwrap_err().contains("with a unit"));
        assert!(parse_go_duration("soon").is_err());
    }

    #[test]
    fn seconds_accept_plain_integers_and_units() {
        assert_eq!(parse_seconds("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_seconds("2m"), Ok(Duration::from_secs(120)));
        assert!(
            parse_seconds("-1")
                .unwrap_err()
                .contains("whole number of seconds")
        );
    }

    #[test]
    fn lists_drop_empty_items() {
        assert_eq!(parse_list(""), Ok(CsvList(vec![])));
        assert_eq!(parse_list("a, b,,c").unwrap().items(), ["a", "b", "c"]);
    }

    #[test]
    fn port_zero_is_refused() {
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").is_err());
        assert_eq!(parse_port("2579"), Ok(2579));
    }

    #[test]
    fn log_filter_is_validated() {
        assert!(parse_log_filter("info,aad_pod_identity=debug").is_ok());
        assert!(parse_log_filter("info,=[").is_err());
    }
}
