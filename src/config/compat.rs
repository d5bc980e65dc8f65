//! The original's flags that this system has no use for, or only partly: klog's logging flags
//! (the original's binaries register all of them, and its chart always passes `--logtostderr`
//! and `-v`), and a few switches of features this design does not need.
//!
//! Every one is accepted, so an operator's existing argument list starts both binaries
//! unchanged; each either works (`--logtostderr`, `--alsologtostderr`, `-v`,
//! `--enableScaleFeatures`, `--custom-user-agent`) or is named once at start in a log line saying it was accepted and
//! ignored. docs/configuration.md lists which is which. Go's boolean forms are understood:
//! `--flag`, `--flag=true`, `--flag=false`, and `1`, `t`, `T`, `TRUE`, `True`, `0`, `f`, ….
//! So is Go's single-dash spelling of a long flag (`-logtostderr`, `-cloudconfig=/etc/azure.json`):
//! [`go_style_args`] rewrites it before clap parses.

use clap::{ArgAction, Args};
use std::ffi::OsString;

/// The command line with Go's single-dash long flags (`-logtostderr`, `-v=2` stays as it is)
/// spelled the way clap reads them (`--logtostderr`).
///
/// Go's flag package treats `-name` and `--name` alike, and manifests written for the original
/// use both. Only an argument whose name (before any `=`) is a long flag of the subcommand being
/// run, and longer than one letter, is rewritten; values, one-letter short flags and everything
/// after `--` are left alone.
#[must_use]
pub fn go_style_args(
    args: impl IntoIterator<Item = OsString>,
    command: &clap::Command,
) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut longs: Option<Vec<String>> = None;
    let mut done = false;
    for (i, arg) in args.into_iter().enumerate() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if i == 0 || done {
            out.push(arg);
            continue;
        }
        if text == "--" {
            done = true;
            out.push(arg);
            continue;
        }
        match &longs {
            None => {
                // The first word that names a subcommand decides which flags are known.
                if let Some(sub) = command.find_subcommand(text) {
                    longs = Some(
                        sub.get_arguments()
                            .filter_map(clap::Arg::get_long)
                            .map(str::to_string)
                            .collect(),
                    );
                }
                out.push(arg);
            }
            Some(known) => {
                let rewritten = text
                    .strip_prefix('-')
                    .filter(|rest| !rest.starts_with('-'))
                    .filter(|rest| {
                        let name = rest.split_once('=').map_or(*rest, |(n, _)| n);
                        name.len() > 1 && known.iter().any(|k| k == name)
                    })
                    .map(|rest| OsString::from(format!("--{rest}")));
                out.push(rewritten.unwrap_or(arg));
            }
        }
    }
    out
}

/// Parses a boolean the way Go's `strconv.ParseBool` does (the original's flag parser).
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

/// klog's flags, as the original registers them (klog v2). Shared by `mic` and `nmi`.
#[derive(Clone, Debug, Default, Args)]
pub struct KlogArgs {
    /// klog: log to standard error. Always the case here; accepted for compatibility.
    #[arg(long = "logtostderr", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub logtostderr: Option<bool>,

    /// klog: also log to standard error. Always the case here; accepted for compatibility.
    #[arg(long = "alsologtostderr", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub alsologtostderr: Option<bool>,

    /// klog verbosity (`-v=2`, `--v=2`). When `--log-level` is left at `info`, 4 and above log
    /// at debug and 6 and above at trace; 0 to 3 keep info.
    #[arg(short = 'v', long = "v", value_name = "LEVEL", value_parser = clap::value_parser!(u8))]
    pub verbosity: Option<u8>,

    /// klog: per-module verbosity. Accepted and ignored (use `--log-level`).
    #[arg(long = "vmodule", value_name = "PATTERN=N,...")]
    pub vmodule: Option<String>,

    /// klog: directory for log files. Accepted and ignored: logs go to standard error.
    #[arg(long = "log_dir", value_name = "DIR")]
    pub log_dir: Option<String>,

    /// klog: log file. Accepted and ignored: logs go to standard error.
    #[arg(long = "log_file", value_name = "FILE")]
    pub log_file: Option<String>,

    /// klog: log file size limit. Accepted and ignored.
    #[arg(long = "log_file_max_size", value_name = "MB")]
    pub log_file_max_size: Option<String>,

    /// klog: log lines without headers. Accepted and ignored.
    #[arg(long = "skip_headers", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub skip_headers: Option<bool>,

    /// klog: log files without headers. Accepted and ignored.
    #[arg(long = "skip_log_headers", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub skip_log_headers: Option<bool>,

    /// klog: source directory in headers. Accepted and ignored.
    #[arg(long = "add_dir_header", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub add_dir_header: Option<bool>,

    /// klog: severity logged to standard error besides files. Accepted and ignored.
    #[arg(long = "stderrthreshold", value_name = "SEVERITY")]
    pub stderrthreshold: Option<String>,

    /// klog: stack trace at a file:line. Accepted and ignored.
    #[arg(long = "log_backtrace_at", value_name = "FILE:LINE")]
    pub log_backtrace_at: Option<String>,

    /// klog: one file per severity off. Accepted and ignored.
    #[arg(long = "one_output", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub one_output: Option<bool>,
}

impl KlogArgs {
    /// The log filter that `-v` selects when `--log-level` is at its default `info`.
    #[must_use]
    pub fn filter_for(&self, log_filter: &str) -> String {
        match self.verbosity {
            Some(v) if log_filter == "info" && v >= 6 => "trace".into(),
            Some(v) if log_filter == "info" && v >= 4 => "debug".into(),
            _ => log_filter.to_string(),
        }
    }

    /// The flags given that have no effect here.
    #[must_use]
    pub fn ignored(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut given = |name: &'static str, set: bool| {
            if set {
                out.push(name);
            }
        };
        given("--vmodule", self.vmodule.is_some());
        given("--log_dir", self.log_dir.is_some());
        given("--log_file", self.log_file.is_some());
        given("--log_file_max_size", self.log_file_max_size.is_some());
        given("--skip_headers", self.skip_headers.is_some());
        given("--skip_log_headers", self.skip_log_headers.is_some());
        given("--add_dir_header", self.add_dir_header.is_some());
        given("--stderrthreshold", self.stderrthreshold.is_some());
        given("--log_backtrace_at", self.log_backtrace_at.is_some());
        given("--one_output", self.one_output.is_some());
        out
    }
}

/// Switches of the original shared by both binaries.
#[derive(Clone, Debug, Default, Args)]
pub struct CommonCompatArgs {
    /// Original: serve pprof on localhost:6060. Accepted and ignored.
    #[arg(long = "enableProfile", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub enable_profile: Option<bool>,

    /// Original: features for large clusters (NMI: watch only this node's assignments; MIC: a
    /// deprecated no-op). Always on here; accepted for compatibility.
    #[arg(long = "enableScaleFeatures", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub enable_scale_features: Option<bool>,

    /// Text appended to the User-Agent of every Azure and Kubernetes request
    /// (`aad-pod-identity/<MIC|NMI>/<version>/<commit>/<build date> <TEXT>`, as the original).
    #[arg(long = "custom-user-agent", value_name = "TEXT")]
    pub custom_user_agent: Option<String>,
}

impl CommonCompatArgs {
    /// The flags given that have no effect here.
    #[must_use]
    pub fn ignored(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.enable_profile == Some(true) {
            out.push("--enableProfile");
        }
        out
    }
}

/// The original MIC's switches for its ConfigMap-driven type upgrade (a one-time migration of
/// objects written by pre-1.6 versions). This MIC reads both forms of those objects, so there
/// is nothing to migrate: accepted and ignored.
#[derive(Clone, Debug, Default, Args)]
pub struct MicCompatArgs {
    /// Original: ConfigMap recording the type upgrade. Accepted and ignored.
    #[arg(long = "config-map-name", value_name = "NAME")]
    pub config_map_name: Option<String>,

    /// Original: key of the type-upgrade status in that ConfigMap. Accepted and ignored.
    #[arg(long = "type-upgrade-status-key", value_name = "KEY")]
    pub type_upgrade_status_key: Option<String>,

    /// Original: run the type upgrade. Accepted and ignored (objects of either form are read).
    #[arg(long = "enable-type-upgrade", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub enable_type_upgrade: Option<bool>,
}

impl MicCompatArgs {
    /// The flags given that have no effect here.
    #[must_use]
    pub fn ignored(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.config_map_name.is_some() {
            out.push("--config-map-name");
        }
        if self.type_upgrade_status_key.is_some() {
            out.push("--type-upgrade-status-key");
        }
        if self.enable_type_upgrade.is_some() {
            out.push("--enable-type-upgrade");
        }
        out
    }
}

/// Logs, once, every given flag that is accepted for compatibility and has no effect.
pub fn log_ignored(component: &str, flags: &[&'static str]) {
    if !flags.is_empty() {
        tracing::info!(
            component,
            flags = %flags.join(" "),
            "accepted for compatibility with the original and ignored (see docs/configuration.md)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        klog: KlogArgs,
        #[command(flatten)]
        common: CommonCompatArgs,
    }

    #[test]
    fn klog_and_go_boolean_forms_parse() {
        let c = Cli::try_parse_from([
            "x",
            "--logtostderr",
            "--alsologtostderr=false",
            "-v=2",
            "--vmodule=a=1",
            "--log_dir=/tmp",
            "--enableScaleFeatures=true",
            "--enableProfile=F",
            "--custom-user-agent=me",
        ])
        .unwrap();
        assert_eq!(c.klog.logtostderr, Some(true));
        assert_eq!(c.klog.alsologtostderr, Some(false));
        assert_eq!(c.klog.verbosity, Some(2));
        assert_eq!(c.common.enable_scale_features, Some(true));
        assert_eq!(c.common.enable_profile, Some(false));
        assert_eq!(c.klog.ignored(), ["--vmodule", "--log_dir"]);
        assert!(
            c.common.ignored().is_empty(),
            "--enableProfile=F asks for nothing"
        );
        assert_eq!(c.common.custom_user_agent.as_deref(), Some("me"));
        for form in [["x", "--v=5"], ["x", "-v5"], ["x", "-v=5"]] {
            assert_eq!(Cli::try_parse_from(form).unwrap().klog.verbosity, Some(5));
        }
        assert!(Cli::try_parse_from(["x", "--logtostderr=maybe"]).is_err());
    }

    #[test]
    fn go_single_dash_long_flags_are_rewritten_and_nothing_else() {
        use clap::CommandFactory;
        let cmd = crate::cli::Cli::command();
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let out = go_style_args(
            args(&[
                "aad-pod-identity",
                "mic",
                "-logtostderr",
                "-v=2",
                "-cloudconfig=/etc/kubernetes/azure.json",
                "-leader-election-instance",
                "-x",
                "-unknown-flag",
                "--",
                "-logtostderr",
            ]),
            &cmd,
        );
        assert_eq!(
            out,
            args(&[
                "aad-pod-identity",
                "mic",
                "--logtostderr",
                "-v=2",
                "--cloudconfig=/etc/kubernetes/azure.json",
                "--leader-election-instance",
                "-x",
                "-unknown-flag",
                "--",
                "-logtostderr",
            ])
        );
        // Flags of another subcommand are not known here.
        let out = go_style_args(args(&["x", "mic", "-node=n0"]), &cmd);
        assert_eq!(out, args(&["x", "mic", "-node=n0"]));
        let out = go_style_args(
            args(&["x", "nmi", "-node=n0", "-enableScaleFeatures=true"]),
            &cmd,
        );
        assert_eq!(
            out,
            args(&["x", "nmi", "--node=n0", "--enableScaleFeatures=true"])
        );
    }

    #[test]
    fn verbosity_raises_the_default_level_only() {
        let k = |v| KlogArgs {
            verbosity: Some(v),
            ..KlogArgs::default()
        };
        assert_eq!(k(2).filter_for("info"), "info");
        assert_eq!(k(4).filter_for("info"), "debug");
        assert_eq!(k(8).filter_for("info"), "trace");
        assert_eq!(k(8).filter_for("warn"), "warn");
    }
}
