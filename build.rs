//! Stamps the build with its commit and date for `--version` and the User-Agent.
//!
//! The values come from the environment (`image/build` and the Dockerfile set them), never from
//! running git here: a build script that read `.git` would rebuild the whole crate on every commit.

fn main() {
    for var in ["AAD_POD_IDENTITY_GIT_COMMIT", "AAD_POD_IDENTITY_BUILD_DATE"] {
        println!("cargo:rerun-if-env-changed={var}");
        let value = std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty() && v.chars().all(|c| c.is_ascii_graphic()))
            .unwrap_or_else(|| "unknown".to_string());
        println!("cargo:rustc-env={var}={value}");
    }
}
