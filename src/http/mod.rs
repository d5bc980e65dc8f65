//! NMI's HTTP surface (token endpoint, host token, metadata pass-through), probes and `/metrics`.
