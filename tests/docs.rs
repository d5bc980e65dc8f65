//! docs/configuration.md stays true to the binary: every flag of `mic` and `nmi` is documented
//! with its default and its environment variable.

use aad_pod_identity::cli::Cli;
use clap::CommandFactory;

const DOC: &str = include_str!("../docs/configuration.md");

/// The lines of the section whose heading starts with `heading`.
fn section(heading: &str) -> impl Iterator<Item = &'static str> {
    DOC.lines()
        .skip_while(move |l| !l.starts_with(&format!("## {heading}")))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
}

/// The table row of `--flag`: in the subcommand's own section, else in the common one.
fn row(sub: &str, flag: &str) -> Option<&'static str> {
    let key = format!("| `--{flag}` |");
    let heading = if sub == "mic" { "MIC" } else { "NMI" };
    section(heading)
        .find(|l| l.starts_with(&key))
        .or_else(|| section("Common").find(|l| l.starts_with(&key)))
        .or_else(|| {
            // The original's flags kept for compatibility share rows, one row per group.
            let mention = format!("`--{flag}`");
            section("Flags of the original accepted for compatibility").find(|l| {
                l.starts_with("| `") && l.split(" | ").next().is_some_and(|c| c.contains(&mention))
            })
        })
}

#[test]
fn every_flag_is_documented_with_its_default_and_env() {
    let cmd = Cli::command();
    let mut checked = 0;
    for name in ["mic", "nmi"] {
        let sub = cmd.find_subcommand(name).unwrap();
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let row = row(name, long)
                .unwrap_or_else(|| panic!("--{long} is not documented in docs/configuration.md"));
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(
                    row.contains(&format!("`{env}`")),
                    "--{long}: env {env} missing from its row: {row}"
                );
            }
            for default in arg.get_default_values() {
                let d = default.to_string_lossy();
                if d.is_empty() || long == "leader-election-instance" {
                    continue; // empty list / host name: the row says so in words
                }
                assert!(
                    row.contains(&format!("`{d}`")),
                    "--{long}: default {d} missing from its row: {row}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 35, "only {checked} flags checked");
}
