//! What this build is: version, commit and build date, for `--version` and the User-Agent of
//! every Azure and Kubernetes call.
//!
//! The commit and date are stamped by `image/build` (or the Dockerfile) through the environment
//! at compile time; a plain `cargo build` says `unknown` for both rather than guessing.

/// The crate version (the chart's `appVersion` follows it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from, or `unknown`.
pub const GIT_COMMIT: &str = env!("AAD_POD_IDENTITY_GIT_COMMIT");
/// When the binary was built (UTC, `YYYY-MM-DD-HH:MM` as the original stamped it), or `unknown`.
pub const BUILD_DATE: &str = env!("AAD_POD_IDENTITY_BUILD_DATE");

/// `--version`'s text after the program name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AAD_POD_IDENTITY_GIT_COMMIT"),
    ", built ",
    env!("AAD_POD_IDENTITY_BUILD_DATE"),
    ")"
);

/// The component a User-Agent names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The controller.
    Mic,
    /// The node agent.
    Nmi,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Self::Mic => "MIC",
            Self::Nmi => "NMI",
        }
    }
}

/// The User-Agent in the original's form,
/// `aad-pod-identity/<MIC|NMI>/<version>/<commit>/<build date>`, followed by the operator's
/// `--custom-user-agent` when one is set (Azure support finds a cluster's calls by it).
#[must_use]
pub fn user_agent(component: Component, custom: Option<&str>) -> String {
    let base = format!(
        "aad-pod-identity/{}/{VERSION}/{GIT_COMMIT}/{BUILD_DATE}",
        component.as_str()
    );
    match custom.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("{base} {c}"),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_has_the_originals_five_parts_and_appends_the_custom_one() {
        let ua = user_agent(Component::Mic, None);
        let parts: Vec<&str> = ua.split('/').collect();
        assert_eq!(parts[..3], ["aad-pod-identity", "MIC", VERSION]);
        assert_eq!(parts.len(), 5 + BUILD_DATE.matches('/').count());
        assert_eq!(
            user_agent(Component::Nmi, Some(" team-a ")),
            format!("{} team-a", user_agent(Component::Nmi, None))
        );
        assert_eq!(
            user_agent(Component::Nmi, Some("  ")),
            user_agent(Component::Nmi, None)
        );
    }
}
