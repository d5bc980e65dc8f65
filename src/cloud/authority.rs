//! Which Azure AD authorities NMI may send a service principal's credential to.
//!
//! An AzureIdentity's `adEndpoint` is written by whoever may create AzureIdentities in a
//! namespace, and NMI answers it with a client secret or a signed client assertion. So the
//! endpoint must be one of the known clouds' authorities over https, the operator's
//! `$AZURE_AUTHORITY_HOST`, or an authority the operator allowed with `--allowed-ad-endpoints`
//! (plain http only on loopback, for the sandbox). Anything else is refused before a Secret is read.

use std::net::IpAddr;

/// Hosts of the known clouds' Azure AD authorities (public, US Government, China, Germany).
pub const KNOWN_AUTHORITY_HOSTS: &[&str] = &[
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
    "login.microsoftonline.de",
];

/// An authority origin (scheme, host, port) NMI may talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedAuthority {
    scheme: String,
    host: String,
    port: u16,
}

fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

impl AllowedAuthority {
    /// Parses an operator-given authority: `https://host[:port][/]`, or `http://` for a
    /// loopback host.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let host = url.host().ok_or_else(|| format!("{s:?} has no host"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&host) => {}
            "http" => {
                return Err(format!(
                    "{s:?}: plain http is allowed only for loopback hosts (the sandbox); use https"
                ));
            }
            other => return Err(format!("{s:?}: scheme {other} is neither https nor http")),
        }
        Self::from_url(&url).ok_or_else(|| format!("{s:?} has no usable origin"))
    }

    /// The origin of `url`, whatever its scheme (for the operator's own default authority).
    #[must_use]
    pub fn from_url(url: &url::Url) -> Option<Self> {
        Some(Self {
            scheme: url.scheme().to_ascii_lowercase(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

/// Why an `adEndpoint` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL.
    #[error("adEndpoint {0:?} is not a URL")]
    NotUrl(String),
    /// Carries credentials, a query or a fragment.
    #[error("adEndpoint {0:?} must be a bare authority (no user info, query or fragment)")]
    NotBare(String),
    /// Not a known cloud's authority and not allowed by the operator.
    #[error(
        "adEndpoint {0:?} is not a known Azure AD authority (https://login.microsoftonline.com/ and the other clouds') nor allowed by --allowed-ad-endpoints"
    )]
    Unknown(String),
}

/// The authorities service principals may use.
#[derive(Clone, Debug, Default)]
pub struct AuthorityPolicy {
    extra: Vec<AllowedAuthority>,
}

impl AuthorityPolicy {
    /// The known clouds plus `extra`.
    #[must_use]
    pub fn new(extra: impl IntoIterator<Item = AllowedAuthority>) -> Self {
        Self {
            extra: extra.into_iter().collect(),
        }
    }

    /// Also allows `a`.
    pub fn allow(&mut self, a: AllowedAuthority) {
        if !self.extra.contains(&a) {
            self.extra.push(a);
        }
    }

    /// Checks an AzureIdentity's `adEndpoint`.
    ///
    /// # Errors
    /// [`Refused`] with the reason.
    pub fn check(&self, endpoint: &str) -> Result<(), Refused> {
        let url = url::Url::parse(endpoint).map_err(|_| Refused::NotUrl(endpoint.into()))?;
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(Refused::NotBare(endpoint.into()));
        }
        let origin =
            AllowedAuthority::from_url(&url).ok_or_else(|| Refused::NotUrl(endpoint.into()))?;
        let known = origin.scheme == "https"
            && origin.port == 443
            && KNOWN_AUTHORITY_HOSTS.contains(&origin.host.as_str());
        if known || self.extra.contains(&origin) {
            Ok(())
        } else {
            Err(Refused::Unknown(endpoint.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_clouds_over_https_pass_and_everything_else_is_refused() {
        let p = AuthorityPolicy::default();
        for ok in [
            "https://login.microsoftonline.com/",
            "https://LOGIN.microsoftonline.com",
            "https://login.microsoftonline.us/",
            "https://login.chinacloudapi.cn/",
            "https://login.microsoftonline.com:443/",
        ] {
            assert_eq!(p.check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://login.microsoftonline.com/",
            "https://login.microsoftonline.com:8443/",
            "https://login.microsoftonline.com.evil.example/",
            "https://evil.example/",
            "https://user:pw@login.microsoftonline.com/",
            "https://login.microsoftonline.com/?x=1",
            "http://127.0.0.1:9999/",
            "not a url",
        ] {
            assert!(p.check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_operator_can_allow_more_but_plain_http_only_on_loopback() {
        let mut p =
            AuthorityPolicy::new([AllowedAuthority::parse("https://login.example.com").unwrap()]);
        assert_eq!(p.check("https://login.example.com/"), Ok(()));
        assert!(p.check("https://login.example.com:444/").is_err());
        assert!(AllowedAuthority::parse("http://login.example.com").is_err());
        assert!(AllowedAuthority::parse("ftp://127.0.0.1").is_err());
        p.allow(AllowedAuthority::parse("http://127.0.0.1:8181/").unwrap());
        assert_eq!(p.check("http://127.0.0.1:8181/"), Ok(()));
        assert!(p.check("http://127.0.0.1:8182/").is_err());
    }
}
