//! tracing-subscriber setup: text or JSON lines on stderr, filtered RUST_LOG-style.
//!
//! Nothing here knows about tokens; the rule that no token, secret or certificate is ever
//! logged is kept by the code that handles them (they are never put in a span or event field).

use crate::config::{LogArgs, LogFormat};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filter did not parse (clap validates it first, so this is only reached from code).
    #[error("invalid log filter {filter:?}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// Parser error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadySet(#[source] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber for `args`.
pub fn init(args: &LogArgs) -> Result<(), Error> {
    let wanted = args.effective_filter();
    let filter = EnvFilter::try_new(&wanted).map_err(|source| Error::Filter {
        filter: wanted.clone(),
        source,
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(true))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    }
    .map_err(Error::AlreadySet)
}
