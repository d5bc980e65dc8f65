# The image the chart runs: `docker build -t aad-pod-identity:0.1.0 .` (the tag follows the chart's
# appVersion). image/build makes the same image without a daemon or a registry; keep the two in step
# (entrypoint, user, paths, labels); tests/image.rs checks both.
#
# Build arguments: GIT_COMMIT and BUILD_DATE stamp `--version` and the User-Agent.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
ARG GIT_COMMIT=unknown
ARG BUILD_DATE=unknown
RUN AAD_POD_IDENTITY_GIT_COMMIT="$GIT_COMMIT" AAD_POD_IDENTITY_BUILD_DATE="$BUILD_DATE" \
    cargo build --release --locked -p aad-pod-identity --bin aad-pod-identity \
 && install -m 0755 target/release/aad-pod-identity /aad-pod-identity

FROM debian:bookworm-slim
# iptables and conntrack for NMI's redirect (both backends: NMI drives the one holding the kubelet's
# chains); CA certificates for ARM, Azure AD and the API server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home --shell /sbin/nologin nonroot
COPY --from=build /aad-pod-identity /usr/local/bin/aad-pod-identity
ARG GIT_COMMIT=unknown
ARG BUILD_DATE=unknown
ARG VERSION=0.1.0
ARG SOURCE=
LABEL org.opencontainers.image.title="aad-pod-identity" \
      org.opencontainers.image.description="AAD Pod Identity in Rust: MIC and NMI" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$GIT_COMMIT" \
      org.opencontainers.image.created="$BUILD_DATE" \
      org.opencontainers.image.source="$SOURCE" \
      org.opencontainers.image.licenses="MIT"
# MIC runs as this user; NMI's pod runs as root (the chart sets it) because it writes iptables rules.
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/local/bin/aad-pod-identity"]
CMD ["--help"]
